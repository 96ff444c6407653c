"""Issue #16: runs never lose or misstate data, and every bad input is one line and exit 2.

One test per row of the issue's table (``test_rowNN_...``; rows 14 to 16, the README, its links and the
nox session, are in test_cli.py with the other entry points), plus what they rest on: the exclusive claim of a results
directory and the path checks (`harness.core.paths`), and the memory estimate (`harness.core.memory`).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from test_cli import TINY, fake_reports  # noqa: F401 (a fixture)
from test_gate import lognormal_ms, results, row, write_run

from baselines.problem import Problem
from harness import cli
from harness.apps import tune
from harness.apps.gate import inputs
from harness.core import memory, paths, runner
from harness.core.results import ResultsFile, load_results
from harness.core.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
CASE = "1024x1024/hilberta_t16/layer0"


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def run_args(suite: Path, *extra: str) -> list[str]:
    return ["run", str(suite), "--device", "cpu", "--no-progress", *extra]


def one_error_line(capsys) -> str:
    """The stderr of a command that must fail on bad input: exactly one line, ``error: ...``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---- row 1: two runs into one --out at once -----------------------------------------------------------------

def test_row01_a_second_run_into_a_claimed_out_dir_stops_and_the_first_is_kept(tiny_suite, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "shared"
    original, started, codes = runner.ResultsFile, [], []

    def results_file(*args, **kwargs):  # the first run is past its checks but has not written yet
        if not started:
            started.append(True)
            codes.append(cli.main(run_args(tiny_suite, "--out", str(out))))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "ResultsFile", results_file)
    assert cli.main(run_args(tiny_suite, "--out", str(out))) == 0
    assert codes == [2]
    assert "already holds a run" in capsys.readouterr().err
    kept = load_results(out)
    assert kept["complete"] is True and {r["status"] for r in kept["cases"]} == {"ok"} and len(kept["cases"]) == 2


@pytest.mark.parametrize("writers", [2, 8])
def test_exclusive_claim_has_exactly_one_winner(tmp_path, writers):
    barrier, won, lost = threading.Barrier(writers), [], []

    def claim():
        barrier.wait()
        try:
            won.append(paths.claim_run_dir(tmp_path / "run", "smoke"))
        except paths.RunDirError:
            lost.append(1)

    threads = [threading.Thread(target=claim) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == writers - 1
    assert load_results(tmp_path / "run")["complete"] is False  # the placeholder is a loadable, unfinished run


# ---- row 2: two runs without --out in the same second ---------------------------------------------------

class FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 11, 27, 10, 15, 0, tzinfo=UTC)


def test_row02_two_runs_in_the_same_second_get_their_own_directories(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for module in (paths, runner):
        monkeypatch.setattr(module, "datetime", FrozenClock, raising=False)
    assert cli.main(run_args(tiny_suite)) == 0
    assert cli.main(run_args(tiny_suite)) == 0
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == 2 and all(run.name.startswith("20261127-101500-tiny") for run in runs)
    ids = {load_results(run)["run_id"] for run in runs}
    assert ids == {run.name for run in runs}


@pytest.mark.parametrize("suite", ["smoke", "../../etc/x", "a b/c", ""])
def test_run_ids_are_safe_and_unique_within_a_second(suite):
    now = datetime(2026, 11, 27, 10, 15, 0, tzinfo=UTC)
    ids = {paths.new_run_id(suite, now) for _ in range(20)}
    assert len(ids) > 1
    for run_id in ids:
        assert paths.check_component(run_id, "run_id", "run id") == run_id and "/" not in run_id


# ---- row 3: a killed run says it is incomplete -----------------------------------------------------------

def killed_run(directory: Path, **fields) -> Path:
    file = ResultsFile(directory / "results.json", run_id="killed", suite="bench-ci", extra={"complete": False})
    file.add_case({**row(CASE, lognormal_ms(1.0, 30, 1)), "problem": {"heads": 24}})
    file.set(**fields)
    return directory


@pytest.mark.parametrize("complete", [False, True])
def test_row03_an_incomplete_run_says_so_in_the_summary_and_the_report_command(tmp_path, capsys, fake_reports,
                                                                               complete):
    run = killed_run(tmp_path / "run", complete=complete)
    runner.print_summary(load_results(run), run)
    assert ("INCOMPLETE" in capsys.readouterr().out) is not complete
    assert cli.main(["report", str(run)]) == 0
    assert ("INCOMPLETE" in capsys.readouterr().err) is not complete


# ---- row 4: --update-reference with a killed run ----------------------------------------------------------

@pytest.mark.parametrize("damage", ["incomplete", "failed"])
def test_row04_update_reference_refuses_an_incomplete_or_failed_run_unless_forced(tmp_path, monkeypatch, capsys,
                                                                                  damage):
    monkeypatch.setattr(inputs, "REFERENCES_DIR", tmp_path / "references")
    rows = [row(CASE, lognormal_ms(1.0, 30, 1)), row("1024x1024/sta/layer0", status="failed", reason="boom")]
    data = results(*rows[: 2 if damage == "failed" else 1], suite="bench-ci")
    data["complete"] = damage != "incomplete"
    run = write_run(tmp_path / "run", data)
    assert cli.main(["gate", "--candidate", str(run), "--update-reference"]) == 2
    line = one_error_line(capsys)
    assert damage in line and "--force" in line
    assert not (tmp_path / "references").exists()
    assert cli.main(["gate", "--candidate", str(run), "--update-reference", "--force"]) == 0
    assert len(list((tmp_path / "references").rglob("bench-ci.json"))) == 1


def test_the_verdict_names_an_incomplete_reference(tmp_path, capsys):
    reference = killed_run(tmp_path / "ref")
    candidate = write_run(tmp_path / "cand", results(
        {**row(CASE, lognormal_ms(1.0, 30, 2)), "problem": {"heads": 24}},
        {**row("2048x2048/hilberta_t16/layer0", lognormal_ms(1.0, 30, 3)), "problem": {"heads": 24}},
        suite="bench-ci", env={}))
    assert cli.main(["gate", "--reference", str(reference), "--candidate", str(candidate)]) == 0
    verdict = json.loads((candidate / "verdict.json").read_text())
    assert verdict["incomplete"] == ["reference"] and "INCOMPLETE" in verdict["message"]
    assert "INCOMPLETE" in (candidate / "summary.md").read_text()


# ---- row 5: runs of different problems ----------------------------------------------------------------------

SMOKE_PROBLEM = {"width": 64, "height": 64, "text_tokens": 16, "batch": 1, "heads": 2, "head_dim": 32,
                 "dtype": "float32", "layer": 0}
CI_PROBLEM = {**SMOKE_PROBLEM, "text_tokens": 512, "heads": 24, "head_dim": 128, "dtype": "bfloat16"}


@pytest.mark.parametrize("ref_suite, ref_problem, ref_params, named", [
    ("smoke", CI_PROBLEM, {"tiles": 16}, "suite"),  # another suite
    ("bench-ci", SMOKE_PROBLEM, {"tiles": 16}, "problem.text_tokens"),  # same case id, another problem
    ("bench-ci", CI_PROBLEM, {"tiles": 4}, "params.tiles"),  # same problem, another layout
])
def test_row05_runs_of_different_problems_are_unusable_unless_forced(tmp_path, capsys, ref_suite, ref_problem,
                                                                      ref_params, named):
    ref = write_run(tmp_path / "ref", results({**row(CASE, lognormal_ms(1.0, 30, 1)), "problem": ref_problem,
                                               "params": ref_params}, suite=ref_suite))
    cand = write_run(tmp_path / "cand", results({**row(CASE, lognormal_ms(1.0, 30, 2)), "problem": CI_PROBLEM,
                                                 "params": {"tiles": 16}}, suite="bench-ci"))
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(cand)]) == 2
    verdict = json.loads((cand / "verdict.json").read_text())
    assert verdict["verdict"] == "refused" and named in verdict["message"] and "--force" in verdict["message"]
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(cand), "--force"]) == 0
    assert "Forced" in json.loads((cand / "verdict.json").read_text())["warning"]


# ---- row 6: thresholds that are not thresholds ------------------------------------------------------------

@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "0", "-5"])
def test_row06_a_threshold_must_be_finite_and_positive(tmp_path, capsys, threshold):
    ref = write_run(tmp_path / "ref", results(row(CASE, lognormal_ms(1.0, 50, 1))))
    slow = write_run(tmp_path / "cand", results(row(CASE, lognormal_ms(2.0, 50, 2))))
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(slow), f"--threshold={threshold}"]) == 2
    assert "--threshold" in one_error_line(capsys)
    assert not (slow / "verdict.json").exists()


# ---- row 7: malformed rows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_row, field", [
    ("not a row", "cases[1]"),
    ({**row(CASE, [1.0, 1.1]), "samples_ms": [1.0, "fast"]}, "samples_ms"),
    ({**row(CASE, [1.0, 1.1]), "samples_ms": [1.0, -2.0]}, "samples_ms"),
    ({**row(CASE, [1.0, 1.1]), "status": 5}, "status"),
    ({**row(CASE, [1.0, 1.1]), "correctness": "passed"}, "correctness"),
])
def test_row07_gate_on_malformed_rows_names_the_file_and_field(tmp_path, capsys, bad_row, field):
    good = row("1024x1024/sdpa_cudnn/layer0", lognormal_ms(1.0, 30, 1))
    ref = write_run(tmp_path / "ref", results(good, row(CASE, lognormal_ms(1.0, 30, 2))))
    bad = write_run(tmp_path / "bad", results(good, bad_row))
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(bad)]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and field in line


def tune_run(directory: Path, arch="sm90", **row_changes) -> Path:
    """A finished tune run (schema 1, as a remote runner wrote it) whose winner is the default config."""
    from kernels.config import DEFAULTS

    tune_row = {"kind": "tune", "case": "1024x1024/hilberta_t16/m64_n64", "method": "hilberta_t16",
                "family": "hilberta", "params": DEFAULTS["hilberta"].to_dict(), "status": "ok", "reason": None,
                "samples_ms": [1.0, 1.1, 0.9], "median_ms": 1.0, "ci95_ms": [0.9, 1.1],
                "extra": {"key": "d128_bfloat16_L4096_g256", "default": True, "chosen": True}, **row_changes}
    return write_run(directory, {"schema": 1, "run_id": "tune-x", "suite": "tune", "created": "2026-11-27",
                                 "env": {}, "policy": {"arch": arch}, "cases": [tune_row]})


BAD_ARCHES = ["../../../../tmp/x/PWNED", "sm90/../../x", "/tmp/sm90", "sm", "SM90", "sm9O", "", None, 90]


@pytest.mark.parametrize("changes, field", [
    ({"extra": "chosen"}, "extra.key"),  # row 7: malformed rows
    ({"params": {"block_m": 64, "colour": "red"}}, "params"),
    ({"samples_ms": [1.0, None]}, "samples_ms"),
    *(({"arch": arch}, "policy.arch") for arch in BAD_ARCHES),  # row 8: an arch that would be a path
])
def test_rows07_08_tune_store_from_bad_input_names_the_file_and_field_and_writes_nothing(tmp_path, monkeypatch,
                                                                                         capsys, changes, field):
    monkeypatch.setattr("kernels.config.CONFIG_DIR", tmp_path / "a" / "b" / "c" / "project" / "configs")
    run = tune_run(tmp_path / "tune", **changes)
    assert cli.main(["tune", "--store-from", str(run)]) == 2
    line = one_error_line(capsys)
    assert str(run) in line and field in line
    assert [p for p in tmp_path.rglob("*.json") if p.name != "results.json"] == []


# ---- row 8: values that become paths ---------------------------------------------------------------------------

def test_tune_store_from_a_good_run_writes_only_the_arch_file(tmp_path, monkeypatch):
    monkeypatch.setattr("kernels.config.CONFIG_DIR", tmp_path / "configs")
    assert cli.main(["tune", "--store-from", str(tune_run(tmp_path / "tune"))]) == 0
    assert [p.name for p in (tmp_path / "configs").iterdir()] == ["sm90.json"]


@pytest.mark.parametrize("suite, gpu", [("../../../../tmp/PWNED", "NVIDIA H100"), ("bench-ci", "../../x"),
                                        ("/abs/dir/bench-ci.toml", "NVIDIA/../../H100")])
def test_a_stored_reference_path_stays_in_the_references_folder(tmp_path, monkeypatch, suite, gpu):
    monkeypatch.setattr(inputs, "REFERENCES_DIR", tmp_path / "references")
    try:
        path = inputs.stored_reference_path(results(suite=suite, env={"gpu_name": gpu}))
    except ValueError as exc:
        assert "suite" in str(exc)
        return
    assert path.resolve().parent.parent == (tmp_path / "references").resolve()


@pytest.mark.parametrize("kind, good, bad", [
    ("arch", ["sm80", "sm90", "sm100"], ["../sm90", "sm90/x", "sm", "cpu", "sm90\n"]),
    ("slug", ["bench-ci", "nvidia-h100-80gb-hbm3"], ["..", "../x", "a/b", ".hidden", "A B"]),
    ("run_id", ["20261127-101500-smoke-3f9a"], ["..", "../x", "a/b", "", "-x"]),
])
def test_path_components_accept_names_and_refuse_traversal(kind, good, bad):
    for value in good:
        assert paths.check_component(value, kind, "f") == value
    for value in bad:
        with pytest.raises(paths.PathComponentError, match="f:"):
            paths.check_component(value, kind, "f")


# ---- row 9: thresholds the candidate chooses -----------------------------------------------------------------

def test_row09_thresholds_never_come_from_a_suite_path_the_candidate_names(tmp_path, capsys):
    evil = tmp_path / "evil.toml"
    evil.write_text(TINY + "[gate]\nthreshold_pct = 1000\n")
    ref = write_run(tmp_path / "ref", results(row(CASE, lognormal_ms(1.0, 50, 1)), suite=str(evil)))
    slow = write_run(tmp_path / "cand", results(row(CASE, lognormal_ms(2.0, 50, 2)), suite=str(evil)))
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(slow)]) == 1
    verdict = json.loads((slow / "verdict.json").read_text())
    assert verdict["threshold_pct"] == inputs.DEFAULT_THRESHOLD_PCT and verdict["cases"][0]["outcome"] == "regression"


def test_thresholds_of_a_shipped_suite_come_from_this_repository():
    pct, overrides, source = inputs.trusted_thresholds("/elsewhere/bench-ci.toml")
    assert source == "suites/bench-ci.toml" and pct == load_suite("bench-ci").gate.threshold_pct
    assert overrides == dict(load_suite("bench-ci").gate.overrides)


# ---- rows 10 and 11: device, --out, empty lists ---------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--device", "bogus"], "unknown --device"),
    (["--device", "meta"], "unknown --device"),
    (["--out", "{file}/run"], "not usable"),
    (["--out", "{file}"], "not usable"),
    (["--out", "/proc/hilberta-bench-test/run"], "not usable"),
    (["--methods", ","], "--methods"),
    (["--methods", " , ", ","], "--methods"),
    (["--resolutions", ""], "--resolutions"),
])
def test_rows10_11_bad_device_out_or_empty_lists_are_one_line_and_exit_2(tiny_suite, tmp_path, capsys, extra,
                                                                         words):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a directory")
    argv = [arg.replace("{file}", str(regular_file)) for arg in extra]
    assert cli.main(run_args(tiny_suite, *argv)) == 2
    assert words in one_error_line(capsys)
    assert regular_file.read_text() == "not a directory"


@pytest.mark.parametrize("content, words", [(b"description = \"caf\xe9\"\n", "not UTF-8"), (None, "cannot read")])
def test_unreadable_or_non_utf8_suite_files_are_named(tmp_path, monkeypatch, capsys, content, words):
    path = tmp_path / "broken.toml"
    path.write_bytes(content or TINY.encode())
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):  # as root, chmod cannot make a file unreadable
        if content is None and self == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cli.main(run_args(path)) == 2
    line = one_error_line(capsys)
    assert words in line and str(path) in line


# ---- row 12: a resolution that cannot fit ---------------------------------------------------------------------

def test_row12_an_absurd_resolution_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "total_bytes", lambda device: 16 * memory.GIB)
    monkeypatch.setattr(Problem, "random_qkv", lambda *a, **k: pytest.fail("allocated inputs of an absurd problem"))
    out = tmp_path / "run"
    assert cli.main(["run", "smoke", "--resolutions", "100000x100000", "--device", "cpu", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "100000x100000" in line and "GiB" in line
    assert not out.exists()


def test_the_input_check_reads_a_gpus_memory_without_a_cuda_context(monkeypatch):
    """The parent of a --gpus run checks sizes while its workers start: no context of its own on card 0."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * memory.GIB))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: pytest.fail("mem_get_info creates a CUDA context"))
    assert memory.total_bytes(torch.device("cuda:0")) == 80 * memory.GIB


def test_a_case_that_cannot_fit_now_is_a_skipped_row_with_its_estimate(tiny_suite, tmp_path, monkeypatch):
    suite, device = load_suite(tiny_suite), torch.device("cpu")
    need = {case.method.name: memory.case_estimate(case.problem, case.method, suite.correctness, device).total
            for case in suite.cases()}
    assert need["flex_dense"] > need["sdpa_math"]  # eager Flex holds scores and the whole mask
    free = (need["flex_dense"] + need["sdpa_math"]) / 2 / memory.HEADROOM
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(free))
    assert cli.main(run_args(tiny_suite, "--out", str(tmp_path / "run"))) == 0
    rows = {r["method"]: r for r in load_results(tmp_path / "run")["cases"]}
    assert rows["sdpa_math"]["status"] == "ok"
    assert rows["flex_dense"]["status"] == "skipped" and "memory estimate" in rows["flex_dense"]["reason"]
    assert rows["flex_dense"]["extra"]["memory_estimate"]["total_bytes"] == need["flex_dense"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_input_estimate_is_the_bytes_of_q_k_v_and_the_output(dtype):
    problem = Problem(height=4, width=6, text_tokens=3, heads=2, head_dim=8, dtype=dtype)
    q, k, v = problem.random_qkv("cpu", seed=0)
    real = sum(t.numel() * t.element_size() for t in (q, k, v, torch.empty_like(q)))
    assert memory.inputs_estimate(problem).total == real


# ---- row 13: tune on a machine that cannot store configs ------------------------------------------------------

@pytest.mark.parametrize("argv, tunes", [([], False), (["--kernel", "sta"], False), (["--anyway"], True)])
def test_row13_tune_on_a_cpu_refuses_at_once_unless_asked_to_run_anyway(monkeypatch, capsys, tmp_path, argv, tunes):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    monkeypatch.setattr(tune.command, "tune", lambda *args, **kwargs: calls.append(args) or ([], tmp_path / "r.json"))
    assert cli.main(["tune", *argv, "--out", str(tmp_path / "t")]) == (0 if tunes else 2)
    if tunes:
        assert len(calls) == 1 and calls[0][-1] is False  # results only: nothing stored for 'cpu'
    else:
        assert calls == [] and "--anyway" in one_error_line(capsys)
