"""The kernel benchmark suite (suites/kernel-bench.toml) on a tiny problem (CPU, interpreter): every phase,
the Flex twin and the kernel's anatomy are checked and timed through the runner, and the anatomy's parts add
up to the whole kernel."""

from __future__ import annotations

import dataclasses
import os
from types import MappingProxyType

import pytest

from harness.core.results import load_results
from harness.core.runner import run_suite
from harness.core.suite import load_suite

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the CPU path of the Triton kernel needs TRITON_INTERPRET=1")
TINY_SHAPE = MappingProxyType({"text_tokens": 8, "batch": 1, "heads": 1, "head_dim": 16, "dtype": "float32"})
TINY_TIMING = MappingProxyType({"warmup_ms": 0, "min_samples": 2, "max_samples": 2, "budget_ms": 1, "rounds": 1})


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    """The shipped suite at 128x192 px (8 x 12 tokens), plus flex_dense: a dense
    reference that runs on a CPU (FA2 and cuDNN do not)."""
    suite = load_suite("kernel-bench")
    names = [entry.method.name for entry in suite.methods] + ["flex_dense"]
    suite = dataclasses.replace(suite.select(methods=names), resolutions=("128x192",), shape=TINY_SHAPE,
                                timing=TINY_TIMING)
    out = run_suite(suite, tmp_path_factory.mktemp("kb") / "run", device="cpu", progress=False)
    return {row["case"].split("/", 1)[1]: row for row in load_results(out)["cases"]}


@pytest.mark.parametrize("case", [*(f"hilberta_t16/layer{layer}" for layer in range(4)),
                                  *(f"hilberta_flex_t16/layer{layer}" for layer in range(4)),
                                  "hilberta_t16_shared_rows/layer0", "hilberta_t16_local_rows/layer0",
                                  "hilberta_t1_f0/layer0", "flex_dense/layer0"])
def test_every_phase_twin_and_part_is_correct_and_timed(rows, case):
    row = rows[case]
    assert row["status"] == "ok", row["reason"]
    assert row["correctness"]["passed"] and len(row["samples_ms"]) == 2
    assert row["derived"]["speedup"]["flex_dense"] == pytest.approx(rows["flex_dense/layer0"]["median_ms"]
                                                                  / row["median_ms"])


@pytest.mark.parametrize("case", ["sdpa_flash/layer0", "sdpa_cudnn/layer0"])
def test_gpu_only_dense_kernels_say_why_not(rows, case):
    assert rows[case]["status"] == "unavailable" and rows[case]["reason"]


def test_the_anatomy_parts_add_up_to_the_kernel_and_check_only_their_rows(rows):
    whole, shared, local = (rows[f"hilberta_t16{part}/layer0"] for part in ("", "_shared_rows", "_local_rows"))
    seq_len, text = whole["problem"]["seq_len"], whole["problem"]["text_tokens"]
    s = shared["extra"]["shared_tokens"]
    assert s > text  # text plus the centre
    assert shared["correctness"]["rows_checked"] == s and local["correctness"]["rows_checked"] == seq_len - s
    assert whole["correctness"]["rows_checked"] == seq_len
    for kind in ("computed", "effective"):
        assert shared["flops"][kind] + local["flops"][kind] == pytest.approx(whole["flops"][kind])
    assert shared["flops"]["effective"] == pytest.approx(4.0 * s * seq_len * 16)  # shared rows see every key


def test_the_kernel_run_dense_computes_every_pair(rows):
    dense = rows["hilberta_t1_f0/layer0"]
    assert dense["density"]["token"] == 1.0 and dense["family"] == "hilberta" and dense["category"] == "hilberta"
