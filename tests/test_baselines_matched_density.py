"""Matched-density peers really are within 2 points of HilbertA, counted on the masks themselves, and each
comes with its FA4 twin: same parameters, and the integer rule FA4's mask_mod evaluates keeps the same pairs."""

from __future__ import annotations

import pytest
import torch

from baselines import registry
from baselines.fa4_masks import evaluate, window_constants, window_rule
from baselines.flex_common import TokenMask
from baselines.matched_density import FA4_TWINS, hilberta_density, matched_density
from baselines.problem import Problem
from baselines.window_masks import neighborhood_mask, sliding_tile_mask
from kernels.layout import HilbertLayout

CHUNK = 512  # query rows per comparison


def unit_and_window(params) -> tuple[tuple[int, int], tuple[int, int]]:
    """(unit, window) of the window mask: STA's tile and window of tiles, or NA's 1x1 units and k x k window."""
    return (params["tile"], params["window"]) if "tile" in params else ((1, 1), (params["kernel"],) * 2)


def window_mask(spec, problem: Problem) -> TokenMask:
    """The mask our STA / Flex NA run for ``spec``."""
    unit, window = unit_and_window(registry.resolve(spec).params)
    grid = (problem.height, problem.width, problem.text_tokens)
    return sliding_tile_mask(*grid, unit, window) if unit != (1, 1) else neighborhood_mask(*grid, window[0])


def mask_density(spec, problem: Problem) -> float:
    """Token density counted on the method's mask, row chunk by row chunk (no closed form)."""
    return window_mask(spec, problem).allowed_pairs() / problem.seq_len**2


def assert_fa4_rule_equals_the_mask(twin, spec, problem: Problem):
    """The FA4 twin's mask_mod rule (its constants from the twin's own parameters) equals ``spec``'s mask."""
    unit, window = unit_and_window(registry.resolve(twin).params)
    constants = window_constants(problem.height, problem.width, problem.text_tokens, unit, window)
    mask, keys = window_mask(spec, problem), torch.arange(problem.seq_len, dtype=torch.int32)
    for rows in keys.split(CHUNK):
        assert torch.equal(evaluate(window_rule, constants, rows[:, None], keys[None, :]), mask.rows(rows)), twin


PROBLEMS = [
    Problem(32, 32, text_tokens=128),
    Problem(64, 64, text_tokens=512),  # Flux 1024 px
    Problem(40, 24, text_tokens=64),  # non-square
]
ON_PROBLEMS = pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"{p.height}x{p.width}+{p.text_tokens}")
ON_TILES = pytest.mark.parametrize("tiles", [4, 16])


@ON_PROBLEMS
@ON_TILES
def test_matched_specs_are_within_two_points(problem, tiles):
    layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
    target = float(layout.dense_mask(0).sum()) / problem.seq_len**2 if problem.seq_len <= 1200 else layout.density(0)
    assert hilberta_density(problem, tiles) == pytest.approx(target)
    specs = matched_density(problem, tiles)
    assert specs, "no peer at all"
    for spec in specs[::2]:
        assert spec["method"] in FA4_TWINS
        assert abs(mask_density(spec, problem) - target) <= 0.02, spec
        registry.resolve(spec)  # every spec is a valid registry spec


@ON_PROBLEMS
@ON_TILES
def test_every_match_is_followed_by_its_fa4_twin_with_the_same_mask(problem, tiles):
    specs = matched_density(problem, tiles)
    for spec, twin in zip(specs[::2], specs[1::2], strict=True):
        assert twin == {**spec, "method": FA4_TWINS[spec["method"]]}
        ours, fa4 = registry.resolve(spec), registry.resolve(twin)
        assert fa4.family == ours.family and dict(fa4.params) == {key: ours.params[key] for key in fa4.params}
        assert_fa4_rule_equals_the_mask(twin, spec, problem)  # so the same density, pair for pair


def test_flux_1024_t16_gets_an_sta_and_an_na_peer_and_their_fa4_twins():
    specs = matched_density(Problem(64, 64, text_tokens=512), 16)
    assert [spec["method"] for spec in specs] == ["sta", "sta_fa4", "sta", "sta_fa4", "na", "na_fa4"]
    assert {"method": "na", "kernel": 27} in specs  # 35.0 % vs HilbertA's 34.9 %
    assert {"method": "na_fa4", "kernel": 27} in specs


def test_no_fit_is_logged_or_raised_with_the_reason(caplog):
    problem = Problem(64, 64, text_tokens=512)
    assert matched_density(problem, 16, tolerance=0.0) == []
    assert "no match" in caplog.text and "closest" in caplog.text
    with pytest.raises(ValueError, match="no sparse peer.*closest"):
        matched_density(problem, 16, tolerance=0.0, strict=True)


def test_registry_exposes_matched_density():
    assert registry.matched_density is matched_density
