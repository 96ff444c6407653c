"""The command line (exit codes, delegation, clear errors), its progress bar, the noxfile's sessions, and the
README and docs (which Python runs the harness; every path they link lives in the repository)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from harness import cli
from harness.core import runner
from harness.core.progress import Progress, format_duration
from harness.core.results import ResultsFile
from tests.helpers import tiny_suite

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny_suite("cli test", ["128x128"], ["sdpa_math", "flex_dense"])


@pytest.fixture
def tiny_suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def fake_reports(monkeypatch, tmp_path):
    """A stand-in `reports` package: records its calls and writes an empty report."""
    calls = []

    def build_report(results_dir, compare_dir=None, verdict=None):
        calls.append((str(results_dir), compare_dir and str(compare_dir)))
        path = Path(results_dir) / "report.html"
        path.write_text("<html></html>")
        return path

    monkeypatch.setitem(sys.modules, "reports", types.SimpleNamespace(build_report=build_report))
    return calls


def test_list_shows_methods_measurements_and_suites(capsys):
    assert cli.main(["list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "sdpa_math" in out and "hilberta_t16" in out
    assert "power (NVML)" in out and "traffic (ncu)" in out
    assert "bench-2048" in out


def test_run_writes_results_and_prints_the_table(tiny_suite, tmp_path, capsys, fake_reports):
    out_dir = tmp_path / "run"
    code = cli.main(["run", str(tiny_suite), "--out", str(out_dir), "--device", "cpu", "--no-progress", "--report"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sdpa_math" in printed and f"results: {out_dir / 'results.json'}" in printed
    assert f"report: {out_dir / 'report.html'}" in printed
    assert fake_reports == [(str(out_dir), None)]
    assert {row["status"] for row in json.loads((out_dir / "results.json").read_text())["cases"]} == {"ok"}


def test_run_methods_filter(tiny_suite, tmp_path):
    out_dir = tmp_path / "run"
    assert cli.main(["run", str(tiny_suite), "--out", str(out_dir), "--methods", "sdpa_math", "--device", "cpu",
                     "--no-progress"]) == 0
    rows = json.loads((out_dir / "results.json").read_text())["cases"]
    assert [row["method"] for row in rows] == ["sdpa_math"]


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-suite"], "shipped suites"),
    (["run", "smoke", "--methods", "nosuchmethod"], "nosuchmethod"),
    (["run", "smoke", "--resolutions", "100x100"], "multiple of 16"),
    (["report", "/nonexistent/run"], "no results file"),
])
def test_bad_input_exits_2_with_a_message(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_suite_typo_exits_2_naming_the_line(tmp_path, capsys):
    path = tmp_path / "typo.toml"
    path.write_text(TINY.replace("heads = 1", "haeds = 1"))
    assert cli.main(["run", str(path)]) == 2
    assert f"{path}:4:" in capsys.readouterr().err


def test_usage_errors_exit_2():
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["run"]) == 2
    assert cli.main(["--help"]) == 0


@pytest.mark.parametrize("statuses, expected", [
    (["ok", "unavailable", "skipped"], 0),
    (["ok", "incorrect"], 1),
    (["ok", "failed"], 1),
])
def test_run_exit_code_follows_the_case_statuses(tiny_suite, tmp_path, monkeypatch, statuses, expected):
    def fake_run_suite(suite, out_dir, **_):
        file = ResultsFile(Path(out_dir) / "results.json", run_id="r", suite="tiny")
        for i, status in enumerate(statuses):
            file.add_case({"kind": "kernel", "case": f"c{i}", "method": f"m{i}", "status": status,
                           "reason": None if status == "ok" else "because"})
        return Path(out_dir)

    monkeypatch.setattr(runner, "run_suite", fake_run_suite)
    assert cli.main(["run", str(tiny_suite), "--out", str(tmp_path / "run")]) == expected


def test_report_delegates_to_reports(tmp_path, fake_reports, capsys):
    for name in ("a", "b"):
        ResultsFile(tmp_path / name / "results.json", run_id=name, suite="tiny")
    assert cli.main(["report", str(tmp_path / "a"), "--compare", str(tmp_path / "b")]) == 0
    assert fake_reports == [(str(tmp_path / "a"), str(tmp_path / "b"))]
    assert "report.html" in capsys.readouterr().out


def test_a_failing_report_is_an_error_but_not_a_traceback(tmp_path, monkeypatch, capsys):
    def broken(results_dir, compare_dir=None, verdict=None):
        raise KeyError("figure")

    monkeypatch.setitem(sys.modules, "reports", types.SimpleNamespace(build_report=broken))
    ResultsFile(tmp_path / "results.json", run_id="r", suite="tiny")
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "the HTML report failed: KeyError" in capsys.readouterr().err


def test_missing_delegate_module_is_a_clear_error_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(cli.DELEGATES, "tune", ("harness.no_such_module", "tune kernels"))
    assert cli.main(["tune", "--anything", "goes"]) == 2
    err = capsys.readouterr().err
    assert "`tune` is not available" in err and "harness.no_such_module" in err
    assert "Traceback" not in err


def test_present_delegate_gets_its_own_arguments(monkeypatch):
    seen = {}
    module = types.ModuleType("fake_tool")
    module.add_arguments = lambda parser: parser.add_argument("--level", type=int)
    module.run = lambda args: seen.setdefault("level", args.level) and 0
    monkeypatch.setitem(sys.modules, "fake_tool", module)
    monkeypatch.setitem(cli.DELEGATES, "tune", ("fake_tool", "tune kernels"))
    assert cli.main(["tune", "--level", "3"]) == 0
    assert seen == {"level": 3}


@pytest.mark.parametrize("argv, code, stream, expected", [
    (["--help"], 0, "stdout", "run"),
    (["run", "no-such-suite"], 2, "stderr", "error: "),
], ids=["help", "bad-input"])
def test_python_dash_m_harness_flushes_its_output_and_keeps_its_exit_code(argv, code, stream, expected):
    # the process ends through harness.exit_now (no interpreter teardown): its output must still be flushed
    done = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == code and expected in getattr(done, stream)


# ---- noxfile ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noxfile():
    nox = pytest.importorskip("nox")
    nox.registry._REGISTRY.clear()
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, dict(nox.registry.get())


def test_nox_sessions_and_defaults(noxfile):
    _, sessions = noxfile
    expected = {"tests", "smoke", "bench-1024", "bench-2048", "bench-4096", "bench-ci", "density-sweep",
                "e2e-flux", "gate", "tune", "report"}
    assert expected <= set(sessions)
    assert sys.modules["nox"].options.sessions == ["tests"]
    for name in expected - {"tests"}:
        assert sessions[name].default is False, name


class FakeSession:
    """Records what a nox session would install and run."""

    def __init__(self, backend: str, torch_importable: bool = False, cuda: bool = False):
        self.venv_backend, self.env, self.posargs = backend, {}, ["--methods", "hilberta"]
        self.installs, self.runs = [], []
        self.answers = {"find_spec('torch')": str(torch_importable), "cuda.is_available": str(cuda)}

    def install(self, *args):
        self.installs.append(args)

    def run(self, *args, env=None, silent=False, **_):
        if silent:  # a probe: answer like python -c would
            return next(answer for key, answer in self.answers.items() if key in args[-1])
        self.runs.append((args, env))

    def error(self, message):
        raise RuntimeError(message)


def test_no_venv_installs_nothing_and_runs_from_the_source_tree(noxfile):
    _, sessions = noxfile
    session = FakeSession("none")
    sessions["bench-2048"].func(session)
    assert session.installs == []
    assert str(ROOT) in session.env["PYTHONPATH"]
    ((args, _),) = session.runs
    assert args[1:] == ("-m", "harness", "run", "bench-2048", "--report", "--methods", "hilberta")


@pytest.mark.parametrize("torch_importable, cuda", [(False, False), (True, True)])
def test_tests_session_installs_cpu_torch_only_when_missing(noxfile, torch_importable, cuda):
    module, sessions = noxfile
    session = FakeSession("virtualenv", torch_importable=torch_importable, cuda=cuda)
    sessions["tests"].func(session)
    torch_installs = [args for args in session.installs if args[0].startswith("torch")]
    assert torch_installs == ([] if torch_importable else [(module.CPU_TORCH, "--extra-index-url",
                                                            module.CPU_TORCH_INDEX)])
    assert ("-e", ".[test]") in session.installs
    assert (module.NOX_REQUIREMENT,) in session.installs  # issue #16 row 16: else the noxfile tests skip
    ((args, env),) = [(args, env) for args, env in session.runs if args[1:3] == ("-m", "pytest")]
    assert env == ({} if cuda else {"TRITON_INTERPRET": "1"})


# ---- issue #16 rows 14 and 15: which Python runs the harness, and docs whose links live in the repository ----

def test_row14_a_python_without_torch_gets_one_line_naming_it_and_the_install_step():
    code = "import sys; sys.modules['torch'] = None; from harness.cli import main; raise SystemExit(main(['list']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert "torch is not installed in" in done.stderr and sys.executable in done.stderr
    assert "pip install -e ." in done.stderr


def test_row14_the_readme_says_which_python_runs_the_harness_and_how_to_get_one():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The harness directly", 1)[1].split("\n## ", 1)[0]
    assert "pip install -e ." in section and ".nox/tests/bin/python" in section and "3.11" in section


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md", "docs/spec.md", "docs/contracts.md"])
def test_row15_every_path_a_doc_links_or_names_lives_in_the_repository(doc):
    path = ROOT / doc
    text = path.read_text()
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
    named = [p for p in re.findall(r"`([^`\s]+\.(?:md|sh|py|toml))`", text) if "/" in p]
    assert links or named, f"{doc} names no path: the pattern above has gone stale"
    for target in links + named:
        if re.match(r"[a-z]+://", target):
            continue
        base = path.parent if target in links else ROOT
        resolved = (base / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc}: {target} points outside the repository"
        assert resolved.exists(), f"{doc}: {target} does not exist"


# ---- progress on stderr ----------------------------------------------------------------------------------

class Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_plain_lines_with_eta():
    now = [0.0]
    stream = Stream(tty=False)
    progress = Progress(4, stream=stream, label="suite", clock=lambda: now[0])
    progress.step("case a")
    assert stream.text == ""  # plain mode prints finished steps only
    now[0] = 10.0
    progress.advance(note="ok 1.2 ms")
    now[0] = 20.0
    progress.step("case b")
    progress.advance(note="failed: x")
    lines = stream.text.splitlines()
    assert lines == ["suite [1/4 10s elapsed, ETA 30s] case a ok 1.2 ms",
                     "suite [2/4 20s elapsed, ETA 20s] case b failed: x"]


def test_progress_redraws_one_line_on_a_terminal():
    stream = Stream(tty=True)
    progress = Progress(2, stream=stream, label="suite", clock=lambda: 0.0)
    progress.step("case a")
    progress.advance()
    progress.close()
    assert "\n" not in stream.text.rstrip("\n") and stream.text.count("\r") >= 2
    assert "[############------------]" in stream.text


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59.6, "1m00s"), (75, "1m15s"), (3700, "1h01m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
