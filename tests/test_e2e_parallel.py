"""Sequence-parallel Flux (`harness.apps.e2e.parallel`) on the CPU: the all-to-all layout reproduces the
one-GPU attention exactly (simulated ranks), and 2 gloo processes on the tiny Flux model give the one-process
output, for dense attention and for HilbertA (its permutation once per forward, its Triton kernel per rank)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from harness.apps.e2e import parallel  # noqa: E402
from harness.apps.e2e.flux_model import flux_problem, model_spec  # noqa: E402
from tests.helpers import RowCollector


def _local_tokens(text: int, image: int, world: int, rank: int) -> torch.Tensor:
    """Global positions (text first, then image) of rank's shard: its text chunk, then its image chunk."""
    t, i = text // world, image // world
    return torch.cat([torch.arange(rank * t, (rank + 1) * t), text + torch.arange(rank * i, (rank + 1) * i)])


@pytest.mark.parametrize(("world", "heads", "text", "image"), [(2, 2, 4, 8), (4, 8, 4, 12), (3, 6, 3, 9)])
def test_all_to_all_layout_is_the_one_gpu_attention(world, heads, text, image):
    """Every rank sees all tokens of its heads in the one-GPU order, and gets its tokens' output back."""
    torch.manual_seed(0)
    qkv = torch.randn(3, 1, heads, text + image, 8)
    expected = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    shards = [_local_tokens(text, image, world, r) for r in range(world)]
    sends = [parallel.scatter_heads(qkv[:, :, :, idx].contiguous(), world) for idx in shards]
    h = heads // world
    backs = []
    for rank in range(world):
        recv = torch.stack([sends[src][rank] for src in range(world)])  # what all_to_all_single delivers
        full = parallel.join_sequence(recv, text // world)
        torch.testing.assert_close(full, qkv[:, :, rank * h:(rank + 1) * h], rtol=0, atol=0)
        backs.append(parallel.split_sequence(F.scaled_dot_product_attention(full[0], full[1], full[2]), world,
                                             text // world))
    for rank, idx in enumerate(shards):
        recv = torch.stack([backs[src][rank] for src in range(world)])
        torch.testing.assert_close(parallel.gather_heads(recv), expected[:, :, idx])


@pytest.mark.parametrize(("gpus", "counts"), [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 4]),
                                              (8, [1, 2, 4, 8])])
def test_gpu_counts_always_include_one_gpu_as_the_base(gpus, counts):
    assert parallel.gpu_counts(gpus) == counts


@pytest.mark.parametrize(("world", "pixels", "text", "message"), [
    (2, (128, 128), 16, None),
    (4, (128, 128), 18, "text tokens \\(18\\) are not divisible by 4"),
    (3, (128, 112), 12, "image tokens \\(56\\) are not divisible by 3"),
    (5, (128, 128), 20, "heads \\(24\\) are not divisible by 5"),
])
def test_shapes_that_do_not_divide_are_named(world, pixels, text, message):
    problem = flux_problem(model_spec("flux-dev"), *pixels, text, "bfloat16")  # 24 heads
    if message is None:
        parallel.check_divisible(problem, world)
    else:
        with pytest.raises(ValueError, match=message):
            parallel.check_divisible(problem, world)



HILBERTA = {"method": "hilberta", "tiles": 2, "centre": 0.25}


def test_two_gloo_processes_give_the_one_process_output():
    section = {"model": "tiny", "dtype": "float32", "text_tokens": 16, "resolutions": ["128x128", "112x112"],
               "methods": ["sdpa_math", HILBERTA], "step_repeats": 1, "skip_denoise": True}
    results = RowCollector()
    rows = parallel.run_parallel_cases(section, results, 2, "cpu")
    assert rows == results.cases
    by_case = {row["case"]: row for row in rows}
    hilberta = next(r["method"] for r in rows if r["method"].startswith("hilberta"))
    assert sorted(by_case) == sorted(f"{res}/e2e-gpus{n}/{m}" for res in ("128x128", "112x112")
                                     for n in (1, 2) for m in ("sdpa_math", hilberta))
    for method in ("sdpa_math", hilberta):
        one, two = by_case[f"128x128/e2e-gpus1/{method}"], by_case[f"128x128/e2e-gpus2/{method}"]
        assert one["status"] == two["status"] == "ok", (one.get("reason"), two.get("reason"))
        assert two["e2e"]["output_rel_diff_vs_1gpu"] < 1e-5  # fp32: the same math, another summation order
        assert two["e2e"]["gpus"] == 2 and two["e2e"]["all_to_all_ms"] > 0
        assert two["e2e"]["scaling_efficiency"] == pytest.approx(one["median_ms"] / (2 * two["median_ms"]))
        assert one["e2e"]["all_to_all_ms"] == 0
        # 49 image tokens cannot be split over 2 GPUs: those rows fail with the reason, the 1-GPU ones run
        assert by_case[f"112x112/e2e-gpus1/{method}"]["status"] == "ok"
        odd = by_case[f"112x112/e2e-gpus2/{method}"]
        assert odd["status"] == "failed" and "image tokens (49) are not divisible by 2" in odd["reason"]
    assert by_case[f"128x128/e2e-gpus2/{hilberta}"]["e2e"]["permutation"].startswith("whole input once")


@pytest.mark.parametrize(("section", "gpus", "message"), [
    ({"model": "flux-dev", "resolutions": ["1024x1024"]}, 2, "needs CUDA devices"),
    ({"model": "tiny", "dtype": "float32", "resolutions": ["128x128"]}, 0, "--gpus must be at least 1"),
])
def test_refusals_are_one_line_before_any_process_starts(section, gpus, message):
    with pytest.raises(ValueError, match=message):
        parallel.run_parallel_cases(section, RowCollector(), gpus, "cpu")


# ---- a dense method that cannot run here (FA4 on the CPU) ----------------------------------------------------

def _names(methods):
    return [m.name for m in methods]


@pytest.mark.parametrize(("asked", "fallback", "kept", "stands_in"), [
    (["fa4_dense", "sdpa_math"], "flex_dense", ["sdpa_math", "flex_dense"], ["fa4_dense"]),
    (["fa4_dense", "flex_dense"], "flex_dense", ["flex_dense"], None),  # a dense method is left: no fallback
    (["fa4_dense", "sdpa_math"], "sdpa_cudnn", ["sdpa_math"], None),  # the fallback cannot run either
    (["sdpa_math"], "flex_dense", ["sdpa_math"], None),  # no dense method was asked for
])
def test_an_unavailable_dense_method_is_refused_with_its_reason_and_replaced(monkeypatch, asked, fallback, kept,
                                                                            stands_in):
    from baselines.registry import resolve

    monkeypatch.setattr(parallel, "DENSE_FALLBACK", fallback)
    methods, refused, note = parallel.runnable([resolve(name) for name in asked], torch.device("cpu"))
    assert _names(methods) == kept
    assert set(refused) == set(asked) - set(kept)
    assert all(refused[name] for name in refused)  # each with its reason
    assert (note or {}).get("for") == stands_in
    if note:
        assert "fa4_dense: " in note["reason"] and refused["fa4_dense"] in note["reason"]


def test_the_e2e_cli_with_fa4_dense_unavailable_says_so_and_falls_back(monkeypatch, tmp_path, capsys):
    """`python -m harness e2e --gpus 2 --methods fa4_dense,...` on a host without FA4: exit 0, fa4_dense rows
    "unavailable" with the reason, the fallback timed at 1 and 2 GPUs with step, efficiency and all-to-all."""
    from harness.cli import main
    from harness.core.results import load_results

    monkeypatch.setattr(parallel, "DENSE_FALLBACK", "flex_dense")  # sdpa_cudnn needs CUDA; flex runs on the CPU
    code = main(["e2e", "--gpus", "2", "--model", "tiny", "--device", "cpu", "--methods", "fa4_dense,sdpa_math",
                 "--resolutions", "128x128", "--skip-denoise", "--step-repeats", "1", "--no-report",
                 "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 0
    assert "flex_dense runs in its place" in err and "fa4_dense" in err
    rows = {row["case"]: row for row in load_results(tmp_path / "run")["cases"]}
    assert sorted(rows) == sorted(f"128x128/e2e-gpus{n}/{m}" for n in (1, 2)
                                  for m in ("fa4_dense", "sdpa_math", "flex_dense"))
    for n in (1, 2):
        fa4 = rows[f"128x128/e2e-gpus{n}/fa4_dense"]
        assert fa4["status"] == "unavailable" and fa4["reason"] and fa4["e2e"]["gpus"] == n
        stand_in = rows[f"128x128/e2e-gpus{n}/flex_dense"]
        assert stand_in["status"] == "ok", stand_in.get("reason")
        assert stand_in["e2e"]["dense_fallback"]["for"] == ["fa4_dense"]
        for method in ("flex_dense", "sdpa_math"):
            e2e = rows[f"128x128/e2e-gpus{n}/{method}"]["e2e"]
            assert rows[f"128x128/e2e-gpus{n}/{method}"]["median_ms"] > 0  # step latency
            assert e2e["scaling_efficiency"] > 0 and (e2e["all_to_all_ms"] > 0) == (n == 2)
        assert rows[f"128x128/e2e-gpus{n}/sdpa_math"]["derived"]["fastest_dense"] == "flex_dense"
    assert "stands in for fa4_dense" in out and "unavailable" in out
