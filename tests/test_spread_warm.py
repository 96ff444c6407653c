"""Warm workers (`harness.core.spread.warm`, `harness.core.spread.serve`), on the CPU with real processes: a
warm worker runs what a fresh one would and says so in the card's record; it refuses a run of other code or
another environment (and exits; the run goes to a fresh worker); a busy one refuses a second run; Ctrl-C
cancels its run and leaves it warm; ``run`` without ``--gpus`` goes to card 0's warm worker."""

from __future__ import annotations

import json
import stat
import tempfile
import time

import pytest

import harness
from harness.core import spread
from harness.core.results import load_results
from harness.core.spread import serve, warm
from tests.helpers import tiny_suite

TINY_SUITE = tiny_suite("warm test", ["64x64", "128x64"], ["sdpa_math"], extra='layers = [0]\nmetrics = ["timing"]\n')


@pytest.fixture
def served(monkeypatch, tmp_path):
    """A warm worker on card 0 (device cpu) in a runtime folder of its own; stopped afterwards."""
    runtime = tempfile.mkdtemp(prefix="hb")  # short: a Unix socket's path has at most 107 bytes
    monkeypatch.setenv("HILBERTA_RUNTIME_DIR", runtime)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    lines = []
    assert serve.serve_command([0], "start", device="cpu", idle_s=120, wait_s=60, echo=lines.append) == 0, lines
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    yield spread.Selection(suite=str(path))
    serve.serve_command([0], "stop", echo=lambda line: None)


def _run(selection, out, cards=2):
    pool = spread.start_workers(selection, cards, out, device="cpu")
    return load_results(spread.run_spread(selection, cards, out, device="cpu", pool=pool, echo=lambda line: None))


def test_a_warm_worker_runs_what_a_fresh_one_would_and_the_card_record_says_so(served, tmp_path):
    pid = warm.ping("0").reply["pid"]
    first, second = _run(served, tmp_path / "a"), _run(served, tmp_path / "b")
    planned = [case.case_id for case in served.load().cases()]
    for results, runs_before in ((first, 0), (second, 1)):
        assert results["complete"] and [row["case"] for row in results["cases"]] == planned
        assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in results["cases"])
        cards = results["env"]["spread"]["cards"]
        assert cards[0]["warm"]["pid"] == pid and cards[0]["warm"]["runs"] == runs_before
        assert cards[1]["warm"] is None  # card 1 had no warm worker: a fresh process ran its units
    log = (tmp_path / "b" / "gpu0.log").read_text()
    assert f"warm worker pid {pid} on card 0: run 2" in log and "after the request (the suite" in log
    assert warm.ping("0").reply["runs"] == 2


@pytest.mark.parametrize("change, reason", [
    ("env", "environment variable(s) differ: TRITON_TEST_ONLY"),
    ("python", "another Python (/usr/bin/other-python)"),
], ids=["env", "python"])
def test_a_warm_worker_refuses_a_run_of_another_environment_and_a_fresh_worker_runs_it(served, tmp_path, monkeypatch,
                                                                                        change, reason):
    if change == "env":
        monkeypatch.setitem(harness.STARTING_ENVIRON, "TRITON_TEST_ONLY", "1")
    else:
        real = warm.fingerprint
        monkeypatch.setattr(warm, "fingerprint", lambda: {**real(), "python": "/usr/bin/other-python 3.x"})
    results = _run(served, tmp_path / "run")
    assert results["complete"] and all(row["status"] == "ok" for row in results["cases"])
    assert [card["warm"] for card in results["env"]["spread"]["cards"]] == [None, None]
    assert f"fresh worker: the warm worker on this card stopped: {reason}" in (tmp_path / "run" / "gpu0.log").read_text()
    deadline = time.time() + 10
    while warm.ping("0").reply is not None and time.time() < deadline:  # it exits after refusing
        time.sleep(0.1)
    assert warm.ping("0").reply is None


def test_the_fingerprint_follows_the_code_and_names_what_differs(tmp_path, monkeypatch):
    (tmp_path / "kernels").mkdir()
    source = tmp_path / "kernels" / "k.py"
    source.write_text("BLOCK = 64\n")
    before = warm.fingerprint(tmp_path)
    assert warm.fingerprint(tmp_path) == before and warm.stale_reason(before, before) is None
    source.write_text("BLOCK = 128\n")
    assert warm.stale_reason(before, warm.fingerprint(tmp_path)) == "the project's code changed since it started"
    (tmp_path / "kernels" / "notes.txt").write_text("not code")  # tuned configs and notes are read on use
    source.write_text("BLOCK = 64\n")
    assert warm.fingerprint(tmp_path) == before
    monkeypatch.setitem(harness.STARTING_ENVIRON, "CUDA_VISIBLE_DEVICES", "7")  # per card: never a difference
    monkeypatch.setitem(harness.STARTING_ENVIRON, "EDITOR", "vi")  # changes nothing a run does
    assert warm.fingerprint(tmp_path) == before


def test_a_busy_warm_worker_refuses_a_second_run_rather_than_time_beside_it(served, tmp_path):
    run, state = warm.connect("0", served.__dict__, tmp_path / "first.log")
    assert run is not None and state["runs"] == 0  # it now waits for this run's payload
    with pytest.raises(warm.CardBusy, match="card 0: its warm worker is busy with another run"):
        spread.start_workers(served, 2, tmp_path / "second", device="cpu")
    assert list(tmp_path.glob(".spread-*")) == []  # the refused run's logs are gone, its fresh worker released
    assert warm.ping("0").why == "busy with a run"
    assert warm.stop("0").startswith("busy with a run: not stopped")
    run.stdin.write("\n")  # no work for the first run either
    run.stdin.close()
    deadline = time.time() + 30
    while run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert run.returncode == 0 and "released without work" in (tmp_path / "first.log").read_text()
    # the requests its callers gave up on while it was busy are dropped, unanswered: it still serves
    assert warm.ping("0").reply["runs"] == 1 and _run(served, tmp_path / "after")["complete"]


def test_ctrl_c_cancels_the_warm_workers_run_and_leaves_it_warm(served, tmp_path):
    path = tmp_path / "slow.toml"  # a run of hours: every case times 10^8 calls
    path.write_text(TINY_SUITE.replace("min_samples = 2", "min_samples = 100000000").replace(
        "max_samples = 2", "max_samples = 100000000").replace("budget_ms = 1\n", "budget_ms = 600000000\n"))
    selection = spread.Selection(suite=str(path))
    pool = spread.start_workers(selection, 1, tmp_path / "run", device="cpu")
    pool.hand_out(selection, tmp_path / "run", "cpu")
    time.sleep(3)
    pool.terminate()
    assert pool.workers[0].returncode == 130
    assert "cancelled (SIGINT)" in (tmp_path / "run" / "gpu0.log").read_text()
    answer = warm.ping("0")
    assert answer.reply["runs"] == 1 and "stale" not in answer.reply


def test_run_without_gpus_goes_to_card_0s_warm_worker(served, monkeypatch):
    from harness import cli

    seen = []
    monkeypatch.setattr(cli, "_run_spread", lambda args, methods, resolutions: seen.append(args.gpus))
    assert cli.main(["run", served.suite]) == 130  # the stub returns no results directory
    assert seen == [1]
    serve.serve_command([0], "stop", echo=lambda line: None)
    monkeypatch.setattr(cli, "_run_spread", lambda *args: pytest.fail("no warm worker: the run stays in process"))
    assert not cli._warm_worker_on_card0()


def test_a_socket_left_by_a_dead_worker_means_a_fresh_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("HILBERTA_RUNTIME_DIR", tempfile.mkdtemp(prefix="hb"))
    path = warm.socket_path("0")
    path.parent.mkdir(parents=True)
    path.write_text("")  # not a socket any process listens on
    run, why = warm.connect("0", {}, tmp_path / "log")
    assert run is None and "stale socket" in why
    assert json.loads(json.dumps(warm.ping("0").__dict__))["reply"] is None


def test_the_runtime_folder_must_be_private_to_this_user(monkeypatch, tmp_path):
    """A warm worker runs what comes on its socket: its folder is made 0700, and one anyone else could write
    is refused with one line."""
    base = tmp_path / "runtime"
    monkeypatch.setenv("HILBERTA_RUNTIME_DIR", str(base))
    folder = warm.private_dir(warm.runtime_dir())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(base.stat().st_mode) == 0o700
    base.chmod(0o777)
    with pytest.raises(ValueError, match="is not a private directory of this user"):
        warm.private_dir(warm.runtime_dir())


def test_a_warm_workers_socket_is_its_users_alone(served):
    path = warm.socket_path("0")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_serve_replaces_a_warm_worker_that_serves_other_code(served, monkeypatch):
    before = warm.ping("0").reply["pid"]
    monkeypatch.setitem(harness.STARTING_ENVIRON, "TRITON_TEST_ONLY", "1")  # this process's runs differ now
    assert "stale" in warm.ping("0").reply
    lines = []
    assert serve.serve_command([0], "start", device="cpu", idle_s=120, wait_s=60, echo=lines.append) == 0
    after = warm.ping("0").reply
    assert after["pid"] != before and "stale" not in after and lines[0].startswith("gpu0: warm in")
