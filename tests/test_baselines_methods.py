"""Every method that runs on the CPU equals exact attention under its own mask (Triton kernels in the
interpreter, Flex eagerly), on fresh random inputs; plus the bookkeeping of the prepared methods."""

from __future__ import annotations

import os

import pytest
import torch

from baselines import registry
from baselines.problem import Problem
from kernels.reference import reference_attention, relative_error

# Flex runs eagerly on the CPU on purpose; its advice to compile is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETER, reason="Triton kernels on the CPU need TRITON_INTERPRET=1")
TOLERANCE = {"float32": 1e-5, "float16": 5e-3}

GRIDS = {  # name: (height, width, text tokens)
    "8x8": (8, 8, 0),
    "8x8+text": (8, 8, 8),
    "12x20+text": (12, 20, 8),
    "16x16+text": (16, 16, 16),
    "10x13+text": (10, 13, 5),  # not divisible by the STA tiles below
}
TRITON_SPECS = [
    {"method": "hilberta", "tiles": 4},
    {"method": "hilberta", "tiles": 5, "curve": "closed"},
    {"method": "hilberta_raster", "tiles": 3},
    {"method": "sta", "tile": 4, "window": 3},
    {"method": "sta", "tile": [4, 8], "window": [2, 1]},
]
EAGER_SPECS = [
    "sdpa_math",
    "flex_dense",
    {"method": "hilberta_flex", "tiles": 4},
    {"method": "sta_flex", "tile": 4, "window": 3},
    {"method": "na", "kernel": 3},
    {"method": "na", "kernel": 5, "impl": "flex"},
]


def _id(spec) -> str:
    return registry.resolve(spec).name


def check_against_reference(spec, grid: str, dtype: str, layer: int = 1, seed: int = 0):
    height, width, text = GRIDS[grid]
    problem = Problem(height, width, text_tokens=text, heads=2, head_dim=16, dtype=dtype, layer=layer)
    prepared = registry.resolve(spec).prepare(problem, "cpu")
    q, k, v = problem.random_qkv("cpu", seed=seed)
    out = prepared.run(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    ref = reference_attention(q, k, v, mask=prepared.mask_rows)
    assert relative_error(out, ref) < TOLERANCE[dtype], prepared.method
    return prepared


# The HilbertA kernel's own tests (kernels/) sweep layouts; here the wrappers need a few grids, STA all.
TRITON_CASES = [(spec, grid) for spec in TRITON_SPECS[:3] for grid in ("8x8", "12x20+text")] + [
    (spec, grid) for spec in TRITON_SPECS[3:] for grid in ("8x8", "12x20+text", "16x16+text", "10x13+text")]


@needs_interpreter
@pytest.mark.parametrize("spec, grid", TRITON_CASES, ids=lambda x: x if isinstance(x, str) else _id(x))
def test_triton_methods_match_the_reference_fp32(spec, grid):
    check_against_reference(spec, grid, "float32")


@needs_interpreter
@pytest.mark.parametrize("spec", TRITON_SPECS, ids=_id)
def test_triton_methods_match_the_reference_fp16(spec):
    check_against_reference(spec, "12x20+text", "float16", layer=2)


@pytest.mark.parametrize("grid", ["8x8", "12x20+text", "10x13+text"])
@pytest.mark.parametrize("spec", EAGER_SPECS, ids=_id)
def test_eager_methods_match_the_reference(spec, grid):
    for dtype in ("float32", "float16"):
        check_against_reference(spec, grid, dtype)


def test_na_falls_back_to_flex_and_says_why():
    prepared = check_against_reference({"method": "na", "kernel": 3}, "8x8+text", "float32")
    natten_missing = registry.resolve({"method": "na", "impl": "natten"}).availability("cpu")
    assert not natten_missing
    assert prepared.backend == "flex-eager" and "natten" in prepared.extra["fallback"]


def test_na_kernel_larger_than_the_grid_is_refused():
    problem = Problem(8, 8, text_tokens=0, heads=1, head_dim=16, dtype="float32")
    with pytest.raises(ValueError, match="exceeds"):
        registry.resolve({"method": "na", "kernel": 9}).prepare(problem, "cpu")


@needs_interpreter
def test_hilberta_wrapper_exposes_the_layout():
    from kernels.layout import HilbertLayout

    problem = Problem(12, 20, text_tokens=8, heads=2, head_dim=16, dtype="float32", layer=3)
    prepared = registry.resolve({"method": "hilberta", "tiles": 5}).prepare(problem, "cpu")
    layout = HilbertLayout(12, 20, 8, 5)
    assert prepared.method == "hilberta_t5"
    assert torch.equal(prepared.image_order, layout.permutation())
    assert prepared.allowed_pairs == layout.allowed_pairs(3) == int(prepared.dense_mask().sum())
    assert torch.equal(prepared.dense_mask(), layout.dense_mask(3))
    assert prepared.extra["shared_tokens"] == layout.shared_tokens  # harness.measure.correctness samples these rows
    assert prepared.computed_pairs >= prepared.allowed_pairs
    assert "layout" in prepared.setup_ms


@needs_interpreter
def test_sta_prepared_bookkeeping():
    problem = Problem(10, 13, text_tokens=5, heads=2, head_dim=16, dtype="float32")
    prepared = registry.resolve({"method": "sta", "tile": [4, 8], "window": [2, 1]}).prepare(problem, "cpu")
    assert prepared.image_order is None and prepared.backend == "triton-sta"
    assert prepared.allowed_pairs == int(prepared.dense_mask().sum())
    assert prepared.allowed_pairs <= prepared.computed_pairs
    assert prepared.extra["config_source"] == "cpu-interpreter default"


def test_flex_methods_record_mask_time_and_block_counts():
    problem = Problem(12, 20, text_tokens=8, heads=1, head_dim=16, dtype="float32")
    prepared = registry.resolve({"method": "sta_flex", "tile": 4, "window": 1}).prepare(problem, "cpu")
    assert "mask" in prepared.setup_ms
    # L = 248 fits in 2 x 2 Flex blocks of 128; text rows are dense so every block is visited
    assert prepared.computed_pairs == 4 * 128 * 128
    assert prepared.allowed_pairs == int(prepared.dense_mask().sum())


def test_dense_methods_report_no_mask_and_full_density():
    problem = Problem(8, 8, text_tokens=4, heads=1, head_dim=16, dtype="float32")
    prepared = registry.resolve("sdpa_math").prepare(problem, "cpu")
    assert prepared.mask_rows is None and prepared.token_density == 1.0 and prepared.backend == "sdpa-math"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flex_dense", "flash_attn",
                                  "hilberta", "hilberta_flex", "hilberta_raster", "sta", "sta_flex", "na",
                                  {"method": "sta", "tile": [16, 8], "window": [2, 3]}])
def test_gpu_methods_match_the_reference(spec):
    """On a GPU: every available method at a small Flux-like shape (bf16, head dim 128)."""
    method = registry.resolve(spec)
    avail = method.availability("cuda")
    if not avail:
        pytest.skip(f"{method.name}: {avail.reason}")
    problem = Problem(24, 40, text_tokens=64, heads=4, head_dim=128, dtype="bfloat16", layer=1)
    try:
        prepared = method.prepare(problem, "cuda")
    except registry.MethodUnavailable as exc:
        pytest.skip(f"{method.name}: {exc}")
    q, k, v = problem.random_qkv("cuda", seed=0)
    out = prepared.run(q, k, v)
    ref = reference_attention(q, k, v, mask=prepared.mask_rows)
    assert relative_error(out, ref) < 1e-2, f"{method.name} via {prepared.backend}"
