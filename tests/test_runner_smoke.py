"""The runner end to end: fake methods for every way a case can end, correctness checks, interrupts, and
the real `smoke` suite (on CPU through the Triton interpreter, or on the GPU where there is one)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from baselines.base import Availability, Method, PreparedAttention
from baselines.problem import Problem
from baselines.registry import MethodUnavailable
from harness.measure import correctness
from harness.core.results import load_results
from harness.core.runner import console_table, exit_status, print_summary, run_suite, time_group
from harness.core.suite import CorrectnessPolicy, MethodEntry, Suite, load_suite
from harness.measure.timing import TimingPolicy

TINY_SUITE = """\
description = "fakes"
resolutions = ["128x128", "128x64"]
text_tokens = 4
heads = 2
head_dim = 16
dtype = "float32"
layers = [0, 1]
methods = ["sdpa_math"]
[timing]
warmup_ms = 0
min_samples = 3
max_samples = 3
budget_ms = 1
rounds = 1
"""


# ---- fake methods ---------------------------------------------------------------------------------------

def band_mask(problem: Problem, width: int = 3):
    """Rows attend keys within ``width`` positions, and every row attends the text tokens."""
    def rows_fn(rows: torch.Tensor) -> torch.Tensor:
        keys = torch.arange(problem.seq_len)
        near = (keys[None, :] - rows[:, None]).abs() <= width
        return near | (keys[None, :] < problem.text_tokens)
    return rows_fn


def exact(q, k, v, mask_rows=None):
    mask = None if mask_rows is None else mask_rows(torch.arange(q.shape[2]))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def allowed(problem, mask_rows) -> int:
    return problem.seq_len**2 if mask_rows is None else int(mask_rows(torch.arange(problem.seq_len)).sum())


def prepared(problem, run, mask_rows=None, order=None, **extra) -> PreparedAttention:
    pairs = allowed(problem, mask_rows)
    return PreparedAttention(method="fake", problem=problem, backend="fake", run=run, image_order=order,
                             mask_rows=mask_rows, allowed_pairs=pairs, computed_pairs=pairs, extra=extra)


def build_dense(problem, device):
    return prepared(problem, lambda q, k, v: exact(q, k, v))


def build_band(problem, device):
    mask = band_mask(problem)
    order = torch.arange(problem.image_tokens).flip(0)  # a permutation, so the gather gets timed
    return prepared(problem, lambda q, k, v: exact(q, k, v, mask), mask, order)


def build_wrong(problem, device):  # claims the band mask, computes dense attention
    return prepared(problem, lambda q, k, v: exact(q, k, v), band_mask(problem))


def build_half_written(problem, device):
    def run(q, k, v):
        out = torch.empty_like(q)
        half = q.shape[2] // 2
        out[:, :, :half] = exact(q, k, v)[:, :, :half]
        return out
    return prepared(problem, run)


def build_raises(problem, device):
    raise RuntimeError("kaboom in build")


def build_refuses(problem, device):
    raise MethodUnavailable("this backend refuses head_dim 16")


def build_oom_in_timing(problem, device):
    calls = {"n": 0}

    def run(q, k, v):
        calls["n"] += 1
        if calls["n"] > 2:  # first call and correctness pass; timing runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
        return exact(q, k, v)
    return prepared(problem, run)


def fake(name, build, dense=False, family="control", available=True, layers=(0,)) -> MethodEntry:
    method = Method(name=name, label=name, family=family, dense_reference=dense, build=build,
                    check_availability=lambda device: Availability(available, "" if available else "no fake GPU"))
    return MethodEntry(MappingProxyType({"method": name}), method, layers)


FAKES = {
    "fake_dense": ("ok", fake("fake_dense", build_dense, dense=True, family="dense")),
    "fake_band": ("ok", fake("fake_band", build_band, family="hilberta", layers=None)),  # the suite's layers
    "fake_wrong": ("incorrect", fake("fake_wrong", build_wrong)),
    "fake_half": ("incorrect", fake("fake_half", build_half_written)),
    "fake_raises": ("failed", fake("fake_raises", build_raises)),
    "fake_refuses": ("unavailable", fake("fake_refuses", build_refuses)),
    "fake_no_gpu": ("unavailable", fake("fake_no_gpu", build_dense, available=False)),
    "fake_oom": ("skipped", fake("fake_oom", build_oom_in_timing)),
}


def fake_suite(tmp_path, entries) -> Suite:
    path = tmp_path / "fakes.toml"
    path.write_text(TINY_SUITE)
    return dataclasses.replace(load_suite(path), methods=tuple(entries))


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fakes")
    suite = fake_suite(tmp_path, [entry for _, entry in FAKES.values()])
    out = run_suite(suite, tmp_path / "run", device="cpu", progress=False)
    return out, load_results(out)


def rows_of(results, method):
    return [row for row in results["cases"] if row["method"] == method]


@pytest.mark.parametrize("method, expected", [(name, status) for name, (status, _) in FAKES.items()])
def test_every_case_ends_with_the_right_status(fake_run, method, expected):
    _, results = fake_run
    rows = rows_of(results, method)
    assert len(rows) == (4 if method == "fake_band" else 2)  # per resolution (and layer 0, 1 for the band)
    for row in rows:
        assert row["status"] == expected
        assert (row["reason"] is None) == (expected == "ok"), row


def test_layered_methods_run_at_every_suite_layer_and_others_once(fake_run):
    _, results = fake_run
    layers = [(row["problem"]["resolution"], row["problem"]["layer"]) for row in rows_of(results, "fake_band")]
    assert layers == [("128x128", 0), ("128x128", 1), ("128x64", 0), ("128x64", 1)]
    assert [row["problem"]["layer"] for row in rows_of(results, "fake_dense")] == [0, 0]


def test_ok_rows_have_samples_correctness_setup_and_speedups(fake_run):
    _, results = fake_run
    for row in rows_of(results, "fake_band"):
        assert row["n_samples"] == len(row["samples_ms"]) == 3
        assert row["correctness"]["passed"] and row["correctness"]["rows_checked"] == row["problem"]["seq_len"]
        assert {"layout", "first_call", "permute"} <= set(row["setup_ms"])
        assert 0 < row["density"]["token"] < 1
        assert set(row["derived"]["speedup"]) == {"fake_dense"}
        assert row["derived"]["fraction_of_ideal"] > 0
        assert row["ci95_ms"][0] <= row["median_ms"] <= row["ci95_ms"][1]
    for row in rows_of(results, "fake_dense"):
        assert "permute" not in row["setup_ms"]  # row-major: nothing to gather


def test_timed_rows_carry_sample_times_rounds_conditions_and_the_run_schedule(fake_run):
    _, results = fake_run
    timed = [row for row in results["cases"] if row.get("samples_ms")]
    assert timed
    for row in timed:
        n = len(row["samples_ms"])
        assert len(row["samples_t_s"]) == len(row["samples_round"]) == n
        assert all(a < b for a, b in zip(row["samples_t_s"], row["samples_t_s"][1:]))  # increasing in a case
        assert row["samples_round"] == sorted(row["samples_round"]) and row["samples_t_s"][0] >= 0
        assert row["ci_method"] == "block-bootstrap-rounds"
        assert row["conditions"]["status"] == "unavailable"  # no NVML on CPU: the reason instead
    schedule = results["schedule"]
    assert schedule["kind"] == "interleaved-single-call" and schedule["rounds"] == 3
    for group, orders in results["schedule_orders"].items():
        cases = schedule["cases"][group]
        assert len(orders) == 3 and all(sorted(order) == list(range(len(cases))) for order in orders)
        grouped = [row for row in timed if row["problem"]["resolution"] == group]
        assert {row["case"] for row in grouped} == set(cases)
    later = [row["samples_t_s"][0] for row in timed if row["problem"]["resolution"] == "128x64"]
    earlier = [row["samples_t_s"][-1] for row in timed if row["problem"]["resolution"] == "128x128"]
    assert min(later) > max(earlier)  # one clock for the whole run


def test_a_timed_row_is_written_before_its_later_stages(tmp_path, monkeypatch):
    from harness.core.runner import SuiteRun

    def interrupt(self, item):
        raise KeyboardInterrupt

    monkeypatch.setattr(SuiteRun, "_per_case_metrics", interrupt)
    suite = fake_suite(tmp_path, [FAKES["fake_band"][1], FAKES["fake_dense"][1]])
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "run", device="cpu", progress=False)
    rows = load_results(tmp_path / "run")["cases"]
    assert {row["case"] for row in rows} == {"128x128/fake_band/layer0", "128x128/fake_band/layer1",
                                             "128x128/fake_dense/layer0"}
    assert all(len(row["samples_ms"]) == 3 for row in rows)


def test_failures_say_why(fake_run):
    _, results = fake_run
    wrong, half = rows_of(results, "fake_wrong")[0], rows_of(results, "fake_half")[0]
    assert not wrong["correctness"]["passed"] and "tolerance" in wrong["reason"]
    assert wrong.get("derived") is None and wrong.get("tflops") is None
    assert not half["correctness"]["passed"]
    assert "kaboom in build" in rows_of(results, "fake_raises")[0]["reason"]
    assert "refuses head_dim" in rows_of(results, "fake_refuses")[0]["reason"]
    assert "no fake GPU" in rows_of(results, "fake_no_gpu")[0]["reason"]
    assert "out of memory" in rows_of(results, "fake_oom")[0]["reason"]


def test_run_directory_files_and_summary(fake_run):
    out, results = fake_run
    assert results["complete"] is True and results["finished"]
    assert "-fakes" in results["run_id"] and results["device"] == "cpu"  # time-suite[-random suffix]
    assert {p.name for p in out.iterdir()} >= {"results.json", "env.json", "pytest-benchmark.json"}
    exported = json.loads((out / "pytest-benchmark.json").read_text())["benchmarks"]
    assert {b["name"] for b in exported} == {row["case"] for row in results["cases"] if row.get("samples_ms")}
    assert exit_status(results) == 1
    table = console_table(results)
    for row in results["cases"]:
        assert row["method"] in table
    assert "kaboom" in table


def test_wall_time_is_split_into_start_up_stages_and_group_phases(fake_run, capsys):
    _, results = fake_run
    wall = results["wall"]
    groups = wall["groups"]
    assert set(groups) == {row["problem"]["resolution"] for row in results["cases"]}
    for phases in groups.values():
        assert set(phases) == {"prepare_s", "timing_s", "power_s", "metrics_s"}
        assert phases["timing_s"] > 0  # the fakes were timed
    parts = wall["startup_s"] + wall["environment_s"] + wall["ceilings_s"] + sum(
        value for phases in groups.values() for value in phases.values())
    assert 0 < wall["startup_s"] and parts <= wall["total_s"] + 1e-3  # the stages never overlap
    print_summary(results, Path("run"))
    assert f"wall {wall['total_s']:.1f} s: start-up {wall['startup_s']:.1f}" in capsys.readouterr().out


def test_a_directory_holding_a_run_is_refused(fake_run, tmp_path):
    out, _ = fake_run
    suite = fake_suite(tmp_path, [FAKES["fake_dense"][1]])
    with pytest.raises(ValueError, match="already holds a run"):  # harness.core.paths.RunDirError
        run_suite(suite, out, device="cpu", progress=False)


def test_interrupt_leaves_a_loadable_file_with_the_finished_cases(tmp_path):
    def build_interrupts_on_second_problem(problem, device):
        if problem.height == 4:  # 128x64 px: the second resolution
            raise KeyboardInterrupt
        return build_dense(problem, device)

    suite = fake_suite(tmp_path, [FAKES["fake_band"][1], fake("fake_stop", build_interrupts_on_second_problem)])
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "run", device="cpu", progress=False)
    results = load_results(tmp_path / "run")
    assert results["complete"] is False
    assert [row["case"] for row in results["cases"]] == [
        "128x128/fake_band/layer0", "128x128/fake_band/layer1", "128x128/fake_stop/layer0"]
    assert all(row["status"] == "ok" for row in results["cases"])
    assert (tmp_path / "run" / "pytest-benchmark.json").exists()


# ---- correctness on its own ---------------------------------------------------------------------------

PROBLEM = Problem(height=4, width=6, text_tokens=4, heads=2, head_dim=8, dtype="float32")


@pytest.mark.parametrize("build, passes", [(build_dense, True), (build_band, True), (build_wrong, False),
                                           (build_half_written, False)])
def test_check_correctness(build, passes):
    # fresh inputs (no seed): with a seed, a half-written output could reuse the block holding another
    # test's output for the very same inputs, and pass
    result = correctness.check_correctness(build(PROBLEM, "cpu"), CorrectnessPolicy(), "cpu")
    assert result["passed"] is passes
    assert result["rows_checked"] == PROBLEM.seq_len and result["tol"] == 1e-4


def test_nan_output_never_passes():
    nan_out = prepared(PROBLEM, lambda q, k, v: torch.full_like(q, math.nan))
    result = correctness.check_correctness(nan_out, CorrectnessPolicy(tolerances={"float32": 1e9}), "cpu", seed=0)
    assert not result["passed"] and result["rel_err"] == math.inf and result["max_abs_err"] == math.inf


def test_fresh_inputs_for_every_check():
    seen = []

    def run(q, k, v):
        seen.append(q.clone())
        return exact(q, k, v)

    p = prepared(PROBLEM, run)
    correctness.check_correctness(p, CorrectnessPolicy(), "cpu")
    correctness.check_correctness(p, CorrectnessPolicy(), "cpu")
    assert not torch.equal(seen[0], seen[1])


@pytest.mark.parametrize("shared", [3, 40])
def test_large_problems_check_a_fixed_sample_with_first_last_and_shared_rows(shared):
    big = Problem(height=16, width=16, text_tokens=8, heads=1, head_dim=8, dtype="float32")
    policy = CorrectnessPolicy(rows=32, all_rows_max_len=64)
    p = prepared(big, lambda q, k, v: q, shared_tokens=shared)
    generator = torch.Generator().manual_seed(0)
    rows = correctness.rows_to_check(p, policy, generator)
    assert rows.numel() == 32 and torch.equal(rows, rows.unique(sorted=True))
    assert {0, big.seq_len - 1} <= set(rows.tolist())
    assert set(range(shared)) <= set(rows.tolist()) or shared > policy.rows // 2


def test_tolerance_follows_the_dtype():
    policy = CorrectnessPolicy()
    assert [policy.tolerance(d) for d in ("bfloat16", "float16", "float32")] == [1e-2, 5e-3, 1e-4]


# ---- the real smoke suite ------------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_suite_runs(tmp_path, device):
    """On CPU through the Triton interpreter (conftest sets it), or on the GPU where there is one."""
    out = run_suite(load_suite("smoke"), tmp_path / "smoke", device=device, progress=False)
    results = load_results(out)
    assert results["complete"] is True
    cases = results["cases"]
    assert len(cases) == len(load_suite("smoke").cases())
    for row in cases:
        assert row["status"] in ("ok", "unavailable"), (row["case"], row["status"], row["reason"])
        if row["status"] == "ok":
            assert row["samples_ms"] and row["correctness"]["passed"], row["case"]
    ok = {row["method"] for row in cases if row["status"] == "ok"}
    assert {"flex_dense", "hilberta_t4", "hilberta_flex_t4", "sta_tile4x4_win1x1"} <= ok
    assert all(row["derived"]["speedup"] for row in cases if row["status"] == "ok")


def test_rows_name_the_registry_family_and_the_category(fake_run):
    _, results = fake_run
    band = rows_of(results, "fake_band")[0]
    assert (band["family"], band["category"]) == ("fake_band", "hilberta")  # spec["method"], Method.family


def test_time_group_drops_a_call_that_raises_and_times_the_rest():
    def broken():
        raise RuntimeError("launch failed")

    policy = TimingPolicy(warmup_ms=0, min_samples=2, max_samples=2, budget_ms=1, rounds=1)
    result, failures = time_group({"ok": lambda: None, "bad": broken}, policy, torch.device("cpu"))
    assert set(failures) == {"bad"} and "launch failed" in str(failures["bad"])
    assert list(result) == ["ok"] and len(result["ok"]) == 2


E2E_SUITE = 'description = "e2e only"\n[e2e]\nmodel = "tiny"\n'


@pytest.mark.parametrize("given", [False, True])
def test_the_e2e_table_runs_through_the_runner_it_is_given(tmp_path, given):
    (tmp_path / "e2e.toml").write_text(E2E_SUITE)
    calls = []

    def fake_e2e(section, results_file, device):
        calls.append(section)
        results_file.add_case({"kind": "e2e", "case": "128x128/e2e/fake", "status": "ok", "reason": None})
        return []

    out = run_suite(load_suite(tmp_path / "e2e.toml"), tmp_path / "run", device="cpu", progress=False,
                    e2e=fake_e2e if given else None)
    (row,) = load_results(out)["cases"]
    if given:
        assert calls == [{"model": "tiny"}] and row["case"] == "128x128/e2e/fake"
    else:
        assert row["status"] == "unavailable" and "no end-to-end runner" in row["reason"]
