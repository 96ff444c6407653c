"""The kernel benchmark's plumbing on a tiny problem (CPU, interpreter): every callable is checked and
timed, and the derived columns follow from the medians."""

import pytest
import torch

from harness.apps.kernelbench import bench_resolution, to_markdown
from harness.core.suite import CorrectnessPolicy
from harness.measure.timing import TimingPolicy


@pytest.fixture(scope="module")
def rows():
    timing = TimingPolicy(warmup_ms=0, min_samples=2, max_samples=2, budget_ms=1, rounds=1, l2_flush=False)
    return bench_resolution("128x192", 3, torch.device("cpu"), timing, CorrectnessPolicy(),
                            text_tokens=8, heads=1, head_dim=16, dtype="float32")


def test_every_phase_and_baseline_is_checked_and_timed(rows):
    names = {r["name"] for r in rows}
    assert {f"hilberta T=3 phase {layer}" for layer in range(4)} <= names
    assert {"shared rows only", "local rows only", "kernel run dense (T=1, f=0)"} <= names
    for row in rows:
        if row["method"] == "hilberta":
            assert row["correctness"]["passed"] and len(row["samples_ms"]) == 2


def test_derived_columns_follow_from_the_medians(rows):
    by_name = {r["name"]: r for r in rows}
    hilberta = by_name["hilberta T=3 phase 1"]
    flex = by_name.get("flex (same mask) phase 1")
    if flex and "median_ms" in flex:
        assert hilberta["speedup"]["flex_same_mask"] == pytest.approx(flex["median_ms"] / hilberta["median_ms"])
    dense = by_name["kernel run dense (T=1, f=0)"]
    rate = dense["computed_flops"] / dense["median_ms"]
    assert hilberta["predicted_at_dense_kernel_rate_ms"] == pytest.approx(hilberta["computed_flops"] / rate)
    assert 0 < hilberta["token_density"] <= hilberta["block_density"]  # padding can exceed L^2 when tiny


def test_markdown_has_a_row_per_callable(rows):
    table = to_markdown(rows, {"gpu_name": "cpu"})
    assert table.count("\n| 128x192 |") == len(rows)
