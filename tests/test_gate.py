"""The performance gate (harness.apps.gate.compare) and its A/B mode (harness.apps.gate.abtest), on synthetic samples and fake cases.

Samples come from known distributions (lognormal noise around a median), so the right verdict is known:
noise alone must never fail the gate, a 10 % slowdown must be caught. The A/B worker protocol runs on
CPU with a fake case that sleeps (`build_fake_case`, imported by the worker subprocess by name).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.apps.gate import abtest, inputs
from harness.apps.gate import compare as gate

REPO = Path(__file__).resolve().parent.parent
H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15"}


def lognormal_ms(median: float, n: int, seed: int, spread: float = 0.02) -> list[float]:
    return list(median * np.exp(np.random.default_rng(seed).normal(0.0, spread, n)))


def row(case: str, samples: list[float] | None = None, status: str = "ok", kind: str = "kernel", **extra) -> dict:
    out = {"kind": kind, "case": case, "method": case.split("/")[1], "status": status, "reason": None, **extra}
    if samples is not None:
        out.update(samples_ms=samples, median_ms=float(np.median(samples)))
    return out


def results(*rows: dict, env: dict = H100, suite: str = "no-such-suite", run_id: str = "run") -> dict:
    return {"schema": 1, "run_id": run_id, "suite": suite, "created": "2026-11-27T10:00:00+00:00",
            "env": dict(env), "policy": {}, "cases": list(rows)}


def pair(factor: float, seed: int, n: int = 50, case: str = "2048x2048/hilberta_t16/layer0",
         spread: float = 0.02) -> tuple[dict, dict]:
    """Reference and candidate runs of one case; the candidate's true median is ``factor`` times slower."""
    ref = results(row(case, lognormal_ms(2.0, n, seed, spread)))
    cand = results(row(case, lognormal_ms(2.0 * factor, n, seed + 10_000, spread)))
    return ref, cand


def outcome_of(verdict: dict, case: str) -> str:
    return next(e["outcome"] for e in verdict["cases"] if e["case"] == case)


# ---- verdicts from known distributions --------------------------------------------------------------------

@pytest.mark.parametrize("factor, expected, exit_code", [
    (1.00, "unchanged", 0),
    (1.03, "unchanged", 0),  # real, but below the 5 % threshold
    (1.10, "regression", 1),
    (1.50, "regression", 1),
    (0.85, "improvement", 0),
])
def test_verdict_from_known_change(factor, expected, exit_code):
    verdict = gate.compare(*pair(factor, seed=1))
    (entry,) = verdict["cases"]
    assert entry["outcome"] == expected
    assert verdict["exit_code"] == exit_code
    assert entry["ci"][0] <= entry["ratio"] <= entry["ci"][1]
    assert entry["ratio"] == pytest.approx(factor, rel=0.03)


@pytest.mark.parametrize("factor", [1.0, 1.03])
def test_noise_or_a_sub_threshold_change_never_alarms_over_200_seeds(factor):
    outcomes = [gate.compare(*pair(factor, seed))["cases"][0]["outcome"] for seed in range(200)]
    assert outcomes.count("regression") == 0
    assert outcomes.count("improvement") == 0


def test_ten_percent_slowdown_is_caught_in_at_least_95_percent_of_seeds():
    caught = sum(gate.compare(*pair(1.10, seed))["cases"][0]["outcome"] == "regression" for seed in range(200))
    assert caught >= 190


def test_a_regression_needs_the_whole_interval_above_the_threshold_not_just_the_ratio():
    """A 6 % slowdown measured with few, noisy samples: the outcome follows the interval and the p-value."""
    entries = [gate.compare(*pair(1.06, seed, n=10, spread=0.04))["cases"][0] for seed in range(30)]
    for e in entries:
        assert (e["outcome"] == "regression") == (e["ci"][0] > 1.05 and e["p_value"] < gate.ALPHA)
    assert any(e["ratio"] > 1.05 and e["outcome"] == "unchanged" for e in entries)


def test_per_case_threshold_overrides_the_default():
    slow = "4096x4096/hilberta_t16/layer0"
    ref_a, cand_a = pair(1.10, seed=5, case=slow)
    ref_b, cand_b = pair(1.10, seed=6)
    ref = results(*ref_a["cases"], *ref_b["cases"])
    cand = results(*cand_a["cases"], *cand_b["cases"])
    verdict = gate.compare(ref, cand, threshold_pct=5.0, per_case={"4096x4096/*": 20.0})
    assert outcome_of(verdict, slow) == "unchanged"
    assert outcome_of(verdict, "2048x2048/hilberta_t16/layer0") == "regression"
    assert {e["case"]: e["threshold_pct"] for e in verdict["cases"]}[slow] == 20.0


def test_too_few_samples_is_inconclusive_not_a_pass_in_disguise():
    ref = results(row("1024x1024/sdpa_cudnn/layer0", [1.0, 1.01, 0.99]))
    cand = results(row("1024x1024/sdpa_cudnn/layer0", [2.0, 2.02, 1.98]))
    verdict = gate.compare(ref, cand)
    assert verdict["cases"][0]["outcome"] == "inconclusive"
    assert "cannot reach" in verdict["cases"][0]["reason"]


# ---- cases that fail without timing -------------------------------------------------------------------------

def _three_cases(**candidate_rows) -> tuple[dict, dict]:
    names = ["1024x1024/sdpa_cudnn/layer0", "1024x1024/flash_attn3/layer0", "1024x1024/hilberta_t16/layer0"]
    ref = results(*(row(n, lognormal_ms(1.0, 30, i)) for i, n in enumerate(names)))
    cand_rows = {n: row(n, lognormal_ms(1.0, 30, 100 + i)) for i, n in enumerate(names)}
    cand_rows.update(candidate_rows)
    return ref, results(*(r for r in cand_rows.values() if r is not None))


@pytest.mark.parametrize("allow, expected, exit_code", [
    ((), "missing", 1),
    (("1024x1024/flash_attn3/layer0",), "missing-allowed", 0),
    (("*/flash_attn*",), "missing-allowed", 0),
])
def test_missing_case_fails_unless_allowed(allow, expected, exit_code):
    verdict = gate.compare(*_three_cases(**{"1024x1024/flash_attn3/layer0": None}), allow_missing=allow)
    assert outcome_of(verdict, "1024x1024/flash_attn3/layer0") == expected
    assert verdict["exit_code"] == exit_code


@pytest.mark.parametrize("status, allow, expected, exit_code", [
    ("unavailable", (), "failed", 1),
    ("unavailable", ("*/flash_attn*",), "missing-allowed", 0),  # an optional package absent here
    ("failed", ("*/flash_attn*",), "failed", 1),  # a crash is never excused
])
def test_case_ok_in_reference_but_not_run_in_candidate(status, allow, expected, exit_code):
    broken = row("1024x1024/flash_attn3/layer0", status=status, reason="boom")
    verdict = gate.compare(*_three_cases(**{"1024x1024/flash_attn3/layer0": broken}), allow_missing=allow)
    assert outcome_of(verdict, "1024x1024/flash_attn3/layer0") == expected
    assert verdict["exit_code"] == exit_code


@pytest.mark.parametrize("bad_row", [
    row("1024x1024/hilberta_t16/layer0", status="incorrect", correctness={"passed": False, "rel_err": 0.3}),
    row("1024x1024/hilberta_t16/layer0", lognormal_ms(0.5, 30, 7), correctness={"passed": False}),
])
def test_incorrect_candidate_always_fails_even_when_faster_or_allowed(bad_row):
    ref, cand = _three_cases(**{"1024x1024/hilberta_t16/layer0": bad_row})
    verdict = gate.compare(ref, cand, allow_missing=["*"])
    assert outcome_of(verdict, "1024x1024/hilberta_t16/layer0") == "incorrect"
    assert verdict["exit_code"] == 1
    assert verdict["cases"][0]["case"] == "1024x1024/hilberta_t16/layer0"  # worst first


def test_new_and_reference_failed_cases_do_not_fail():
    ref = results(row("a/m1/layer0", status="failed"), row("a/m2/layer0", lognormal_ms(1, 20, 1)))
    cand = results(row("a/m1/layer0", lognormal_ms(1, 20, 2)), row("a/m2/layer0", lognormal_ms(1, 20, 3)),
                   row("a/m3/layer0", lognormal_ms(1, 20, 4)))
    verdict = gate.compare(ref, cand)
    assert {e["case"]: e["outcome"] for e in verdict["cases"]} == {
        "a/m1/layer0": "not-compared", "a/m2/layer0": "unchanged", "a/m3/layer0": "new"}
    assert verdict["exit_code"] == 0


def test_only_kernel_and_e2e_rows_are_gated():
    ref = results(row("a/m/layer0", lognormal_ms(1, 20, 1)), row("a/tune/x", lognormal_ms(1, 20, 2), kind="tune"),
                  row("a/e2e/step", lognormal_ms(100, 20, 3), kind="e2e"))
    cand = results(row("a/m/layer0", lognormal_ms(1, 20, 4)), row("a/e2e/step", lognormal_ms(150, 20, 5), kind="e2e"))
    verdict = gate.compare(ref, cand)
    assert {e["case"]: e["outcome"] for e in verdict["cases"]} == {"a/m/layer0": "unchanged",
                                                                   "a/e2e/step": "regression"}


# ---- environment ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("other_env", [
    {"gpu_name": "NVIDIA H200", "driver_version": "550.54.15"},
    {"gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "560.35.03"},
])
def test_different_gpu_or_driver_is_refused_unless_forced(other_env):
    ref, cand = pair(1.0, seed=2)
    cand["env"] = other_env
    refused = gate.compare(ref, cand)
    assert refused["verdict"] == "refused" and refused["exit_code"] == 2
    assert "--force" in refused["message"] and other_env["gpu_name"] in refused["message"]
    forced = gate.compare(ref, cand, force=True)
    assert forced["exit_code"] == 0 and forced["forced"] and forced["warning"].startswith("Forced")
    assert "Forced" in gate.summary_markdown(forced)


@pytest.mark.parametrize("bad", [{"cases": "nope"}, {"schema": 1}, [1, 2]])
def test_malformed_input_is_a_value_error(bad):
    with pytest.raises(ValueError, match="not a results file"):
        gate.compare(results(), bad)


def test_duplicate_case_ids_are_rejected():
    dup = results(row("a/m/layer0", [1.0] * 5), row("a/m/layer0", [1.0] * 5))
    with pytest.raises(ValueError, match="two rows"):
        gate.compare(dup, dup)


# ---- outputs ----------------------------------------------------------------------------------------------

def test_summary_markdown_holds_the_table_worst_first(tmp_path):
    slow, same = "2048x2048/hilberta_t16/layer0", "2048x2048/sdpa_cudnn/layer0"
    ref = results(row(same, lognormal_ms(5, 50, 1)), row(slow, lognormal_ms(2, 50, 2)))
    cand = results(row(same, lognormal_ms(5, 50, 3)), row(slow, lognormal_ms(2.4, 50, 4)))
    verdict_path, summary_path = gate.write_outputs(gate.compare(ref, cand), tmp_path)
    summary = summary_path.read_text()
    lines = summary.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Case | Outcome | Ratio"))
    assert lines[header + 1].startswith("|---")
    assert f"`{slow}`" in lines[header + 2] and "**regression**" in lines[header + 2]
    assert f"`{same}`" in lines[header + 3] and "unchanged" in lines[header + 3]
    assert "failed" in lines[0]
    stored = json.loads(verdict_path.read_text())
    assert stored["exit_code"] == 1 and stored["cases"][0]["case"] == slow


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
                                        ("NVIDIA H200", "nvidia-h200"), (None, "cpu")])
def test_gpu_slug(name, slug):
    assert inputs.gpu_slug(name) == slug


# ---- command line -----------------------------------------------------------------------------------------

def gate_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gate.add_arguments(parser)
    return parser.parse_args(argv)


def write_run(directory: Path, data: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(data))
    return directory


def test_cli_auto_reference_update_then_gate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inputs, "REFERENCES_DIR", tmp_path / "references")
    ref, cand = pair(1.0, seed=8)
    _, slow = pair(1.2, seed=9)
    base = write_run(tmp_path / "base", {**ref, "suite": "bench-ci"})
    same = write_run(tmp_path / "same", {**cand, "suite": "bench-ci"})
    slower = write_run(tmp_path / "slower", {**slow, "suite": "bench-ci"})

    assert gate.run(gate_args("--reference", "auto", "--candidate", str(base))) == 2
    assert "--update-reference" in capsys.readouterr().err

    assert gate.run(gate_args("--candidate", str(base), "--update-reference")) == 0
    stored = tmp_path / "references" / "nvidia-h100-80gb-hbm3" / "bench-ci.json"
    assert "stored run" in capsys.readouterr().out
    assert json.loads(stored.read_text())["stored_reference"]["source"] == str(base)

    assert gate.run(gate_args("--reference", "auto", "--candidate", str(same))) == 0
    assert (same / "summary.md").is_file() and (same / "verdict.json").is_file()
    out_dir = tmp_path / "gate-out"
    assert gate.run(gate_args("--reference", "auto", "--candidate", str(slower), "--out", str(out_dir))) == 1
    assert "**regression**" in (out_dir / "summary.md").read_text()
    assert "| Case | Outcome" in capsys.readouterr().out  # the table is printed too


def test_cli_refuses_to_store_an_incorrect_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inputs, "REFERENCES_DIR", tmp_path / "references")
    bad = write_run(tmp_path / "bad", results(row("a/m/layer0", status="incorrect")))
    assert gate.run(gate_args("--candidate", str(bad), "--update-reference", "--force")) == 2
    assert "incorrect" in capsys.readouterr().err
    assert not (tmp_path / "references").exists()


def test_cli_unreadable_candidate_is_exit_2(tmp_path, capsys):
    assert gate.run(gate_args("--reference", str(tmp_path), "--candidate", str(tmp_path / "nope"))) == 2
    assert "unusable input" in capsys.readouterr().err


# ---- A/B worker protocol ----------------------------------------------------------------------------------

def build_fake_case(payload, device) -> abtest.PreparedCase:
    """A case that sleeps ``sleep_ms``; ``incorrect`` makes it fail its check. Used by the worker tests."""
    base = {"kind": "kernel", "case": payload["case"], "method": "fake", "status": "ok", "reason": None}
    if payload.get("incorrect"):
        return abtest.PreparedCase({**base, "status": "incorrect", "correctness": {"passed": False}}, None)
    return abtest.PreparedCase(base, lambda: time.sleep(payload.get("sleep_ms", 0.2) / 1e3))


def test_worker_session_answers_each_op_and_survives_errors():
    replies = []
    session = abtest.WorkerSession(build_fake_case, "cpu")
    requests = [{"op": "time", "n": 3}, {"op": "prepare", "case": {"case": "fake/a", "sleep_ms": 0.1}},
                {"op": "time", "n": 4, "warmup_ms": 1}, {"op": "frobnicate"}, {"op": "quit"}, {"op": "hello"}]
    abtest.serve((json.dumps(r) for r in requests), replies.append, session)
    assert len(replies) == 5  # nothing is answered after quit
    assert not replies[0]["ok"] and "prepare" in replies[0]["error"]
    assert replies[1] == {"ok": True, "row": {"kind": "kernel", "case": "fake/a", "method": "fake",
                                              "status": "ok", "reason": None}}
    assert replies[2]["ok"] and len(replies[2]["samples_ms"]) == 4
    assert all(ms >= 0.1 for ms in replies[2]["samples_ms"])
    assert not replies[3]["ok"] and "unknown op" in replies[3]["error"]
    assert replies[4] == {"ok": True}


def test_real_builder_prepares_checks_and_times_a_suite_case():
    from harness.core.suite import load_suite

    suite = load_suite("smoke")
    case = next(c for c in suite.cases() if c.case_id == "128x128/sdpa_math/layer0")
    session = abtest.WorkerSession(abtest.build_case, "cpu")
    payload = {**case.to_dict(), "correctness": suite.describe()["correctness"]}
    row = session.handle({"op": "prepare", "case": payload})["row"]
    assert (row["case"], row["status"], row["kind"]) == ("128x128/sdpa_math/layer0", "ok", "kernel")
    assert row["correctness"]["passed"] and row["correctness"]["rows_checked"] == case.problem.seq_len
    assert len(session.handle({"op": "time", "n": 2, "warmup_ms": 0})["samples_ms"]) == 2
    with pytest.raises(ValueError, match="no_such_method"):
        session.handle({"op": "prepare", "case": {**payload, "method": {"method": "no_such_method"}}})


def test_worker_subprocess_speaks_json_lines():
    worker = abtest.WorkerProcess("a", REPO, builder="test_gate:build_fake_case", extra_path=[str(REPO / "tests")])
    try:
        hello = worker.request("hello")
        assert hello["protocol"] == abtest.PROTOCOL and Path(hello["root"]) == REPO
        assert "gpu_name" in hello["env"]
        assert worker.request("prepare", case={"case": "fake/a", "sleep_ms": 0.2})["row"]["status"] == "ok"
        samples = worker.request("time", n=5, warmup_ms=1)["samples_ms"]
        assert len(samples) == 5 and min(samples) >= 0.2
        with pytest.raises(abtest.WorkerRequestError, match="unknown op"):
            worker.request("frobnicate")
        assert worker.request("prepare", case={"case": "fake/b", "incorrect": True})["row"]["status"] == "incorrect"
    finally:
        worker.close()
    assert worker.proc.returncode == 0


FAKE_KERNEL = '''"""A fake kernel whose speed differs between the two commits of the A/B test repository."""
import time

from harness.apps.gate.abtest import PreparedCase

DELAY_MS = {delay}


def build(payload, device):
    row = {{"kind": "kernel", "case": payload["case"], "method": "fake", "status": "ok", "reason": None}}
    return PreparedCase(row, lambda: time.sleep(DELAY_MS / 1e3))
'''


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ab_repo(tmp_path) -> Path:
    """A scratch git repository with this tree's code and two commits: a fast fake kernel, then a slow one."""
    repo = tmp_path / "repo"
    for package in ("harness", "kernels", "baselines", "suites"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    _git(repo, "init", "-q")
    for delay in (1.0, 3.0):
        (repo / "fakekernel.py").write_text(FAKE_KERNEL.format(delay=delay))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"delay {delay} ms")
    return repo


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_ab_run_times_two_revisions_in_worktrees_and_gates_them(ab_repo, tmp_path):
    out = tmp_path / "ab"
    payloads = [{"case": "fake/sleep/layer0"}]
    runs = abtest.run_ab(ab_repo, {"a": "HEAD~1", "b": "HEAD"}, payloads, out, suite="fake", rounds=2,
                         round_samples=5, builder="fakekernel:build")
    assert _git(ab_repo, "worktree", "list").count("\n") == 1  # the temporary worktrees are gone
    for label in ("a", "b"):
        stored = json.loads((out / label / "results.json").read_text())
        assert stored["revision"]["label"] == label and len(stored["cases"][0]["samples_ms"]) == 10
        assert stored["schedule_orders"] == {"fake/sleep/layer0": [[0, 1], [1, 0]]}  # A B, then B A
        assert stored["schedule"]["cases"] == {"fake/sleep/layer0": ["a", "b"]}
        assert stored["schedule"]["rounds"] == 2 and stored["schedule"]["round_samples"] == 5
    assert runs["a"]["revision"]["commit"] != runs["b"]["revision"]["commit"]
    verdict = gate.compare(runs["a"], runs["b"])
    assert outcome_of(verdict, "fake/sleep/layer0") == "regression"
    assert verdict["cases"][0]["ratio"] > 2.0


@pytest.mark.parametrize("n_sides, rounds, expected", [(2, 1, [[0, 1]]), (2, 4, [[0, 1], [1, 0], [0, 1], [1, 0]]),
                                                       (3, 2, [[0, 1, 2], [2, 1, 0]])])
def test_ab_rounds_alternate_and_their_orders_accumulate_per_case(n_sides, rounds, expected):
    assert abtest.alternating_orders(n_sides, rounds) == expected
    labels, policy = "abc"[:n_sides], {"rounds": rounds, "round_samples": 3}
    data = abtest.schedule_fields({}, "x/m/layer0", labels, policy)
    data = abtest.schedule_fields(data, "y/m/layer0", labels, policy)
    assert data["schedule_orders"] == {"x/m/layer0": expected, "y/m/layer0": expected}
    assert data["schedule"] == {"kind": "ab-alternating-rounds", "rounds": rounds, "round_samples": 3,
                                "cases": {"x/m/layer0": list(labels), "y/m/layer0": list(labels)}}


def test_ab_rejects_a_revision_that_is_not_a_commit(ab_repo, tmp_path):
    with pytest.raises(abtest.AbTestError, match="not a commit"):
        abtest.run_ab(ab_repo, {"a": "HEAD", "b": "no-such-rev"}, [], tmp_path / "ab", builder="fakekernel:build")
    assert _git(ab_repo, "worktree", "list").count("\n") == 1


def test_gate_main_dispatches_ab_mode_and_needs_a_suite(capsys):
    assert gate.run(gate_args("--ab", "HEAD~1", "HEAD")) == 2
    assert "--suite" in capsys.readouterr().out


def test_worker_module_runs_as_a_script():
    done = subprocess.run([sys.executable, "-m", "harness.apps.gate.abtest", "--worker", "--builder", "nocolon"],
                          cwd=REPO, capture_output=True, text=True, input="")
    assert done.returncode != 0 and "module:function" in done.stderr
