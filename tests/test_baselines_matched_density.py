"""Matched-density peers really are within 2 points of HilbertA, counted on the masks themselves."""

from __future__ import annotations

import pytest

from baselines import registry
from baselines.matched_density import hilberta_density, matched_density
from baselines.problem import Problem
from kernels.layout import HilbertLayout


def mask_density(spec, problem: Problem) -> float:
    """Token density counted on the method's mask, row chunk by row chunk (no closed form)."""
    from baselines.flex_common import TokenMask
    from baselines.window_masks import neighborhood_mask, sliding_tile_mask

    method = registry.resolve(spec)
    p = method.params
    mask: TokenMask = (sliding_tile_mask(problem.height, problem.width, problem.text_tokens, p["tile"], p["window"])
                       if spec["method"] == "sta" else
                       neighborhood_mask(problem.height, problem.width, problem.text_tokens, p["kernel"]))
    return mask.allowed_pairs() / problem.seq_len**2


PROBLEMS = [
    Problem(32, 32, text_tokens=128),
    Problem(64, 64, text_tokens=512),  # Flux 1024 px
    Problem(40, 24, text_tokens=64),  # non-square
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"{p.height}x{p.width}+{p.text_tokens}")
@pytest.mark.parametrize("tiles", [4, 16])
def test_matched_specs_are_within_two_points(problem, tiles):
    layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
    target = float(layout.dense_mask(0).sum()) / problem.seq_len**2 if problem.seq_len <= 1200 else layout.density(0)
    assert hilberta_density(problem, tiles) == pytest.approx(target)
    specs = matched_density(problem, tiles)
    assert specs, "no peer at all"
    for spec in specs:
        assert spec["method"] in ("sta", "na")
        assert abs(mask_density(spec, problem) - target) <= 0.02, spec
        registry.resolve(spec)  # every spec is a valid registry spec


def test_flux_1024_t16_gets_an_sta_and_an_na_peer():
    specs = matched_density(Problem(64, 64, text_tokens=512), 16)
    assert {spec["method"] for spec in specs} == {"sta", "na"}
    assert {"method": "na", "kernel": 27} in specs  # 35.0 % vs HilbertA's 34.9 %


def test_no_fit_is_logged_or_raised_with_the_reason(caplog):
    problem = Problem(64, 64, text_tokens=512)
    assert matched_density(problem, 16, tolerance=0.0) == []
    assert "no match" in caplog.text and "closest" in caplog.text
    with pytest.raises(ValueError, match="no sparse peer.*closest"):
        matched_density(problem, 16, tolerance=0.0, strict=True)


def test_registry_exposes_matched_density():
    assert registry.matched_density is matched_density
