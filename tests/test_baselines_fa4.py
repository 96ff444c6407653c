"""FlashAttention-4 methods without flash_attn: the mask formulas its mask_mod evaluates equal the masks
the Flex variants run (with Python and with C integer division), the block tables it gets from a Flex
block mask classify every block as the dense mask does, and its availability reasons."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from baselines import fa4, registry
from baselines.base import Availability
from baselines.fa4_masks import (
    evaluate,
    fa4_block_tables,
    hilberta_constants,
    hilberta_rule,
    window_constants,
    window_rule,
)
from baselines.flex_common import block_mask_for
from baselines.hilberta_methods import hilberta_mask
from baselines.problem import Problem
from baselines.registry import MethodUnavailable
from baselines.window_masks import neighborhood_mask, sliding_tile_mask
from kernels.layout import HilbertLayout

# (height, width, text, tiles, centre, curve, cycle): uneven tiles, a wrap-around phase, no text, no centre
HILBERTA_CASES = [
    (8, 8, 8, 4, 0.25, "hilbert", 4),
    (12, 20, 8, 5, 0.25, "closed", 4),
    (10, 13, 5, 7, 0.0, "hilbert", 3),
    (16, 16, 0, 16, 0.25, "hilbert", 4),
    (6, 9, 3, 1, 0.25, "hilbert", 2),
]
# (height, width, text, unit, window): STA tiles that do not divide the grid, windows wider than the grid
WINDOW_CASES = [
    (8, 8, 8, (4, 4), (3, 3)),
    (10, 13, 5, (4, 4), (3, 3)),
    (12, 20, 8, (4, 8), (2, 1)),
    (9, 11, 0, (3, 5), (5, 5)),
    (10, 13, 5, (1, 1), (3, 3)),  # NA
    (12, 20, 8, (1, 1), (7, 7)),  # NA, clamped at every border
]


def _hilberta(case, layer):
    height, width, text, tiles, centre, curve, cycle = case
    layout = HilbertLayout(height, width, text, tiles, centre_fraction=centre, curve=curve, sliding_cycle=cycle)
    return hilberta_mask(layout, layer), hilberta_rule, hilberta_constants(layout, layer)


def _window(case):
    height, width, text, unit, window = case
    mask = (neighborhood_mask(height, width, text, window[0]) if unit == (1, 1)
            else sliding_tile_mask(height, width, text, unit, window))
    return mask, window_rule, window_constants(height, width, text, unit, window)


MASKS = ([pytest.param(case, layer, id=f"hilberta-{i}-phase{layer}") for i, case in enumerate(HILBERTA_CASES)
          for layer in range(case[-1])]
         + [pytest.param(case, None, id=f"window-{i}") for i, case in enumerate(WINDOW_CASES)])


def _mask(case, layer):
    return _window(case) if layer is None else _hilberta(case, layer)


class CInt:
    """An int tensor whose // and % truncate toward zero, as CuTe's Int32 (C) arithmetic does."""

    def __init__(self, values):
        self.values = values

    @staticmethod
    def _raw(other):
        return other.values if isinstance(other, CInt) else other

    def __add__(self, other):
        return CInt(self.values + self._raw(other))

    def __sub__(self, other):
        return CInt(self.values - self._raw(other))

    def __mul__(self, other):
        return CInt(self.values * self._raw(other))

    def __floordiv__(self, other):
        return CInt(torch.div(self.values, self._raw(other), rounding_mode="trunc"))

    def __mod__(self, other):
        return CInt(torch.fmod(self.values, self._raw(other)))

    def __lt__(self, other):
        return self.values < self._raw(other)

    def __ge__(self, other):
        return self.values >= self._raw(other)

    def __eq__(self, other):
        return self.values == self._raw(other)


@pytest.mark.parametrize("case, layer", MASKS)
@pytest.mark.parametrize("arithmetic", ["python", "c"])
def test_rule_equals_the_flex_mask(case, layer, arithmetic):
    mask, rule, constants = _mask(case, layer)
    positions = torch.arange(mask.seq_len, dtype=torch.int32)
    q, kv = positions[:, None], positions[None, :]
    if arithmetic == "c":
        q, kv = CInt(q), CInt(kv)
    assert torch.equal(evaluate(rule, constants, q, kv), mask.dense())


@pytest.mark.parametrize("pixels, tiles, layer", [(4096, 64, 3), (4096, 16, 1), (2048, 4, 2)])
def test_hilberta_formula_fits_int32(pixels, tiles, layer):
    problem = Problem.from_pixels(pixels, pixels)
    layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
    c = hilberta_constants(layout, layer)
    largest = (problem.seq_len - 1 + c["base"], (c["n"] - 1) * c["t"] + c["t_minus_1"])
    assert c["base"] >= 0 and max(largest) < 2**31


def _classes(tables, num_q_blocks, num_kv_blocks):
    """int8 [M, N] for batch 0, head 0: 0 skipped, 1 partial (mask_mod), 2 full."""
    classes = torch.zeros(num_q_blocks, num_kv_blocks, dtype=torch.int8)
    for kind, value in (("mask", 1), ("full", 2)):
        counts, indices = tables[f"{kind}_block_cnt"], tables[f"{kind}_block_idx"]
        if counts is None:
            continue
        for m in range(num_q_blocks):
            visited = indices[0, 0, m, : int(counts[0, 0, m])].long()
            assert not (classes[m, visited] != 0).any(), f"query block {m} visits a key block twice"
            classes[m, visited] = value
    return classes


def _check_tables(mask, block_mask):
    tables = fa4_block_tables(block_mask)
    block_q, block_kv = tables["block_size"]
    length = mask.seq_len
    num_q, num_kv = -(-length // block_q), -(-length // block_kv)
    for name in ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx"):
        assert tables[name].dtype == torch.int32 and tables[name].is_contiguous(), name
    assert tables["mask_block_cnt"].shape[-1] == num_q and tables["mask_block_idx"].shape[-2:] == (num_q, num_kv)
    classes, dense = _classes(tables, num_q, num_kv), mask.dense()
    seen = set()
    for m in range(num_q):
        for n in range(num_kv):
            block = dense[m * block_q:(m + 1) * block_q, n * block_kv:(n + 1) * block_kv]
            expected = {2} if bool(block.all()) else {1} if bool(block.any()) else {0}
            if block.shape != (block_q, block_kv) and bool(block.all()):
                expected = {1, 2}  # cut by the sequence's end: Flex may keep it partial (safe, FA4 masks it)
            assert int(classes[m, n]) in expected, f"block ({m}, {n}) of {mask.name}"
            seen.add(int(classes[m, n]))
    return seen


@pytest.mark.parametrize("case, layer", MASKS)
def test_block_tables_small_blocks(case, layer):
    mask, _, _ = _mask(case, layer)
    block_mask = create_block_mask(mask.mask_mod("cpu"), None, None, mask.seq_len, mask.seq_len, device="cpu",
                                   BLOCK_SIZE=16)
    _check_tables(mask, block_mask)


@pytest.mark.parametrize("mask", [
    pytest.param(hilberta_mask(HilbertLayout(24, 26, 40, 4), 1), id="hilberta-T4-phase1"),
    pytest.param(hilberta_mask(HilbertLayout(30, 30, 60, 16, curve="closed"), 3), id="hilberta-T16-closed-phase3"),
    pytest.param(sliding_tile_mask(32, 40, 160, (8, 8), (3, 3)), id="sta-8x8-3x3"),
    pytest.param(neighborhood_mask(30, 34, 150, 9), id="na-9"),
])
def test_block_tables_of_the_cached_flex_block_mask(mask):
    """The real path: `block_mask_for` at FA4's 128-token blocks, L not a multiple of 128."""
    assert mask.seq_len % 128
    block_mask, _ = block_mask_for(mask, torch.device("cpu"))
    assert fa4_block_tables(block_mask)["block_size"] == (128, 128)
    assert _check_tables(mask, block_mask) >= {1, 2}  # both kinds occur, so both tables are exercised


def test_block_tables_without_full_blocks():
    counts, indices = torch.ones(1, 1, 2, dtype=torch.int64), torch.zeros(1, 1, 2, 2, dtype=torch.int64)
    block_mask = SimpleNamespace(kv_num_blocks=counts, kv_indices=indices.transpose(-1, -2),
                                 full_kv_num_blocks=None, full_kv_indices=None, BLOCK_SIZE=(128, 128))
    tables = fa4_block_tables(block_mask)
    assert tables["full_block_cnt"] is None and tables["full_block_idx"] is None
    assert tables["mask_block_idx"].dtype == torch.int32 and tables["mask_block_idx"].is_contiguous()


# ---- availability ------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_status():
    fa4.fa4_function.cache_clear()
    fa4._device_status.cache_clear()
    yield
    fa4.fa4_function.cache_clear()
    fa4._device_status.cache_clear()


def _fake_fa4(monkeypatch, func=None):
    monkeypatch.setattr(fa4, "fa4_function", lambda: (func or (lambda q, k, v: (q, None)), "flash-attn-4 fake"))


def test_not_installed_says_how_to_install(fresh_status, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)
    avail = fa4.fa4_probe(torch.device("cuda"))
    assert not avail and "not importable" in avail.reason and "pip install .[fa4]" in avail.reason


@pytest.mark.parametrize("device, cuda, capability, expected", [
    ("cpu", False, None, "needs a CUDA device, got cpu"),
    ("cuda", False, None, "no CUDA device"),
    ("cuda", True, (8, 6), "needs sm90 or newer"),
])
def test_unavailable_reasons(fresh_status, monkeypatch, device, cuda, capability, expected):
    _fake_fa4(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: capability)
    avail = fa4.fa4_probe(torch.device(device))
    assert not avail and expected in avail.reason and "flash-attn-4 fake" in avail.reason


def test_hopper_runs_the_tiny_call_once(fresh_status, monkeypatch):
    _fake_fa4(monkeypatch)
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (9, 0))
    monkeypatch.setattr(fa4, "tiny_call", lambda func, device, tag: calls.append(device) or Availability(True, tag))
    assert fa4.fa4_probe(torch.device("cuda")) and fa4.fa4_probe(torch.device("cuda"))
    assert calls == [torch.device("cuda")]


@pytest.mark.parametrize("fails", [False, True])
def test_tiny_call_reports_the_error(fails):
    def func(q, k, v):
        if fails:
            raise RuntimeError("boom")
        return q.transpose(1, 2), None

    avail = fa4.tiny_call(func, torch.device("cpu"), "flash-attn-4 fake")
    assert bool(avail) is not fails
    if fails:
        assert "failed a tiny call: RuntimeError: boom" in avail.reason


def test_float32_is_refused(fresh_status, monkeypatch):
    _fake_fa4(monkeypatch)
    monkeypatch.setattr(fa4, "fa4_probe", lambda device, **_: Availability(True, "fake"))
    with pytest.raises(MethodUnavailable, match="float16/bfloat16"):
        fa4._fa4_for(Problem(4, 4, dtype="float32"), torch.device("cpu"))


@pytest.mark.parametrize("spec, name, category", [
    ("fa4_dense", "fa4_dense", "dense"),
    ({"method": "hilberta_fa4", "tiles": 4, "curve": "closed"}, "hilberta_fa4_t4_closed", "hilberta"),
    ({"method": "hilberta_fa4split", "tiles": 4, "shared_rows": "fused"}, "hilberta_fa4split_t4_fused", "hilberta"),
    ({"method": "sta_fa4", "tile": [16, 8], "window": [3, 8]}, "sta_fa4_tile16x8_win3x8", "sliding_tile"),
    ({"method": "na_fa4", "kernel": 27}, "na_fa4_k27", "neighborhood"),
])
def test_registered_and_unavailable_on_cpu(spec, name, category):
    method = registry.resolve(spec)
    assert (method.name, method.family, method.dense_reference) == (name, category, name == "fa4_dense")
    assert registry.resolve(name) is method
    avail = method.availability("cpu")
    assert not avail and avail.reason
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        method.prepare(Problem(8, 8, text_tokens=8), "cpu")


# ---- FA4's compile cache: one key per mask, the same in every process ------------------------------------

KEY_IN_A_FRESH_PROCESS = (
    "from baselines import fa4; from baselines.fa4_masks import hilberta_rule; "
    "print(fa4.mask_cache_key(hilberta_rule, {'shared': 5, 'n': 64, 't': 4, 't_minus_1': 3, 'base': 7}))")


def test_mask_cache_key_is_the_same_in_another_process():
    """FA4's own hash holds the rule's address (a new one per process): the disk cache would never hit."""
    import subprocess

    here = fa4.mask_cache_key(hilberta_rule, {"base": 7, "n": 64, "shared": 5, "t": 4, "t_minus_1": 3})
    there = subprocess.run([sys.executable, "-c", KEY_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert here == there


@pytest.mark.parametrize("other_rule, other_constants", [
    (hilberta_rule, {"shared": 5, "n": 64, "t": 4, "t_minus_1": 3, "base": 8}),  # another sliding phase
    (hilberta_rule, {"shared": 5, "n": 64, "t": 4, "t_minus_1": 3}),
    (window_rule, {"shared": 5, "n": 64, "t": 4, "t_minus_1": 3, "base": 7}),
])
def test_mask_cache_key_differs_when_the_mask_does(other_rule, other_constants):
    base = fa4.mask_cache_key(hilberta_rule, {"shared": 5, "n": 64, "t": 4, "t_minus_1": 3, "base": 7})
    assert fa4.mask_cache_key(other_rule, other_constants) != base


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_disk_cache_is_on_unless_the_environment_says_otherwise(given, expected):
    import os
    import subprocess

    env = {key: value for key, value in os.environ.items() if key != fa4.DISK_CACHE_ENV}
    env.update({} if given is None else {fa4.DISK_CACHE_ENV: given})
    code = f"import os, baselines.fa4; print(os.environ[{fa4.DISK_CACHE_ENV!r}])"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert found.stdout.strip() == expected
