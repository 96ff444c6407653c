"""Spreading a suite over several GPUs (`harness.core.spread`), on the CPU: real workers (the ordinary
runner on "cpu") merge into one valid results.json with ``device_index`` on every row, by problem group and
by (resolution, layer) sub-group; two cards timing the same resolution keep both their schedule orders; a
worker that dies turns only its own cases into "failed" rows. The plan itself: tests/test_spread_plan.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.core import spread
from harness.core.results import load_results
from harness.core.schema import SchemaError
from harness.core.suite import load_suite
from tests.helpers import tiny_suite

# four problem groups of different sizes; one method, one phase: a worker runs in a few seconds
TINY_SUITE = tiny_suite("spread test", ["64x64", "128x64", "128x128", "192x128"], ["sdpa_math"],
                        extra='layers = [0]\nmetrics = ["timing"]\n')


@pytest.fixture
def suite_path(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


# ---- real workers on the CPU -------------------------------------------------------------------------------

def _failing_on(index: int | None, selection):
    """A launcher running the real worker, except on card ``index``, which exits 3 after a message."""
    def launch(worker):
        if worker.index == index:
            return [sys.executable, "-c", "import sys; print('simulated crash of this card'); sys.exit(3)"]
        return spread.worker_command(selection, "cpu")
    return launch


def _worker(index: int, units: list[str], directory) -> spread.Worker:
    """A worker record as the parent holds it once dispatched."""
    return spread.Worker(index, directory.with_suffix(".log"), units=units, directory=directory)


@pytest.mark.parametrize("failing", [None, 1], ids=["all-ok", "gpu1-dies"])
def test_spread_run_merges_one_valid_results_file(tmp_path, suite_path, failing):
    selection = spread.Selection(suite=str(suite_path))
    out = spread.run_spread(selection, 2, tmp_path / "run", device="cpu", launcher=_failing_on(failing, selection),
                            echo=lambda line: None)
    results = load_results(out)  # validates the merged file
    suite = selection.load()
    planned = [case.case_id for case in suite.cases()]
    assert [row["case"] for row in results["cases"]] == planned  # each case once, in plan order
    plan = spread.spread_plan(suite, 2)
    assert not plan.split  # one phase: the sub-groups are the groups, no lighter
    card_of = {unit: index for index, units in enumerate(plan.assignment) for unit in units}
    for row in results["cases"]:
        index = card_of[row["problem"]["resolution"]]
        assert row["device_index"] == index
        if index == failing:
            assert row["status"] == "failed"
            assert "GPU 1" in row["reason"] and "exit code 3" in row["reason"]
            assert "simulated crash" in row["reason"]
        else:
            assert row["status"] == "ok" and row["median_ms"] > 0
            assert row["extra"]["device"]["index"] == index
    assert results["complete"] is (failing is None)
    cards = results["env"]["spread"]["cards"]
    assert [card["exit_code"] for card in cards] == [0, 3 if failing else 0]
    assert [card["units"] for card in cards] == plan.assignment
    if failing is None:  # every group's orders and case ids, keyed by resolution: nothing was split
        assert sorted(results["schedule_orders"]) == sorted(results["schedule"]["cases"]) == sorted(suite.resolutions)
    assert not list(out.glob(".*.tmp"))  # the atomic write left no temp file
    assert set(results["wall"]) >= {"startup_s", "check_s", "workers_s", "merge_s", "total_s"}
    assert results["wall"]["workers_s"] <= results["wall"]["total_s"]
    walls = [card["wall"] for card in cards]
    assert walls[0]["groups"] and (walls[1] is None) is (failing == 1)  # the dead worker never wrote its own
    assert all(0 <= card["started_s"] <= card["exited_s"] <= results["wall"]["total_s"] for card in cards)


# one resolution at two phases: an anchor (flex_dense, dense, layer 0 only) and sdpa_math at both phases
# with its A/A twin; two cards take one (resolution, layer) sub-group each
LAYERED_SUITE = (tiny_suite("layered spread test", ["128x64"], ["sdpa_math"],
                            extra='layers = [0, 1]\nmetrics = ["timing"]\n')
                 .replace("methods = ['sdpa_math']", 'methods = ["flex_dense", {method = "sdpa_math", layers = [0, 1]}]')
                 + '[control]\naa = ["sdpa_math"]\n')


def test_sub_groups_of_one_resolution_on_two_cards_keep_both_schedules(tmp_path):
    path = tmp_path / "layered.toml"
    path.write_text(LAYERED_SUITE)
    selection = spread.Selection(suite=str(path))
    lines = []
    out = spread.run_spread(selection, 2, tmp_path / "run", device="cpu", echo=lines.append)
    results = load_results(out)
    suite, plan = selection.load(), spread.spread_plan(selection.load(), 2)
    assert plan.split and sorted(plan.units) == ["128x64/layer0", "128x64/layer1"]
    assert [row["case"] for row in results["cases"]] == [case.case_id for case in suite.cases()]
    assert results["complete"] is True and all(row["status"] == "ok" for row in results["cases"])
    card_of = {unit: index for index, units in enumerate(plan.assignment) for unit in units}
    rows = {row["case"]: row for row in results["cases"]}
    for row in rows.values():
        assert row["device_index"] == card_of[f"128x64/layer{row['problem']['layer']}"]
    # both cards timed "128x64": each keeps its orders and its case ids under its own key
    assert sorted(results["schedule_orders"]) == sorted(results["schedule"]["cases"]) == sorted(plan.units)
    for unit, ids in results["schedule"]["cases"].items():
        assert {rows[cid]["device_index"] for cid in ids} == {card_of[unit]}
        assert sorted(ids) == sorted(case.case_id for case in plan.units[unit])
        assert all(sorted(order) == list(range(len(ids))) for order in results["schedule_orders"][unit])
    # each A/A twin was compared with its original, on their card
    assert sorted(pair["b"] for pair in results["aa_pairs"]) == sorted(
        case.case_id for case in suite.cases() if case.twin)
    spread_env = results["env"]["spread"]
    assert spread_env["unit"] == "resolution/layer" and spread_env["unanchored"] == ["128x64/layer1"]
    assert any("128x64/layer1" in line and "anchor" in line for line in lines)
    # no speedup across cards: the layer 1 row's card timed no dense method, the layer 0 rows' card did
    assert rows["128x64/sdpa_math/layer1"]["derived"] is None
    assert rows["128x64/sdpa_math/layer0"]["derived"]["fastest_dense"] == "flex_dense"


def _worker_dir(root, index: int, units: list[str], rows: list[dict], orders: dict, complete: bool = True):
    directory = root / f"gpu{index}"
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({
        "schema": 2, "run_id": f"w{index}", "env": {"gpu_name": "Card", "gpu_uuid": f"GPU-{index}"},
        "policy": {}, "complete": complete, "aa_pairs": [{"a": "x", "b": f"y{index}"}],
        "schedule": {"kind": "interleaved", "rounds": 3 + index, "cases": {g: ["?"] for g in orders}},
        "schedule_orders": orders, "cases": rows}))
    worker = _worker(index, units, directory)
    worker.returncode = 0
    return worker


def _plan(suite, assignment: list[list[str]], split: bool) -> spread.Plan:
    units = spread.units_of(suite, split)
    return spread.Plan(split, units, dict.fromkeys(units, 1.0), assignment)


@pytest.mark.parametrize("split", [False, True], ids=["groups", "sub-groups"])
def test_merge_keeps_every_cards_orders_and_refuses_a_case_run_twice(tmp_path, split):
    suite = load_suite(tmp_path.joinpath("s.toml").write_text(LAYERED_SUITE) and tmp_path / "s.toml")
    row = {"kind": "kernel", "case": "a", "status": "ok", "reason": None}
    if split:  # both cards timed the one resolution, each its own layer: the runner keys both "128x64"
        assignment = [["128x64/layer0"], ["128x64/layer1"]]
        orders = [{"128x64": [[0, 1, 2]]}, {"128x64": [[1, 0]]}]
    else:
        assignment, orders = [["128x64"], []], [{"128x64": [[0, 1, 2, 3, 4]]}, {}]
    workers = [_worker_dir(tmp_path, i, assignment[i], [{**row, "case": "ab"[i]}], orders[i]) for i in (0, 1)]
    merged = spread.merge_workers(suite, workers[:1 + split], "run", _plan(suite, assignment, split))
    expected = ({"128x64/layer0": [[0, 1, 2]], "128x64/layer1": [[1, 0]]} if split
                else {"128x64": [[0, 1, 2, 3, 4]]})
    assert merged["schedule_orders"] == expected
    assert sorted(merged["schedule"]["cases"]) == sorted(expected)
    assert merged["schedule"]["rounds"] == 3  # the fewest of any card
    assert merged["aa_pairs"] == [{"a": "x", "b": "y0"}, {"a": "x", "b": "y1"}][:1 + split]
    assert merged["env"]["spread"]["assignment"] == {f"gpu{i}": assignment[i] for i in range(1 + split)}
    assert [r["extra"]["device"]["uuid"] for r in merged["cases"] if r["case"] in "ab"] == ["GPU-0", "GPU-1"][:1 + split]
    twice = [_worker_dir(tmp_path / "twice", i, ["128x64/layer0", "128x64/layer1"][i:i + 1], [row], {})
             for i in (0, 1)]
    with pytest.raises(SchemaError, match="appears twice"):
        spread.merge_workers(suite, twice, "run", _plan(suite, [["128x64/layer0"], ["128x64/layer1"]], True))


def test_group_keys_name_the_layers_a_card_holds_of_a_split_resolution(tmp_path):
    suite = load_suite("bench-2048")
    plan = _plan(suite, [["2048x2048/layer0", "2048x2048/layer2"], ["2048x2048/layer1", "2048x2048/layer3"]], True)
    workers = [_worker(i, units, tmp_path / f"gpu{i}") for i, units in enumerate(plan.assignment)]
    assert spread.group_keys(plan, workers) == {(0, "2048x2048"): "2048x2048/layer0+layer2",
                                                (1, "2048x2048"): "2048x2048/layer1+layer3"}
    whole = _plan(suite, [list(spread.units_of(suite, True))], True)  # every layer on one card: its plain key
    assert spread.group_keys(whole, [_worker(0, whole.assignment[0], tmp_path)]) == {(0, "2048x2048"): "2048x2048"}


def test_a_dead_worker_fails_its_own_sub_group_with_its_twins(tmp_path):
    path = tmp_path / "layered.toml"
    path.write_text(LAYERED_SUITE)
    suite = load_suite(path)
    plan = _plan(suite, [["128x64/layer0"], ["128x64/layer1"]], True)
    alive = _worker_dir(tmp_path, 0, ["128x64/layer0"], [], {})
    dead = _worker(1, ["128x64/layer1"], tmp_path / "gpu1")
    dead.returncode = 3
    alive_rows = [{"kind": "kernel", "case": case.case_id, "status": "ok", "reason": None}
                  for case in plan.units["128x64/layer0"]]
    (alive.directory / "results.json").write_text(json.dumps({**json.loads((alive.directory / "results.json")
                                                                           .read_text()), "cases": alive_rows}))
    merged = spread.merge_workers(suite, [alive, dead], "run", plan)
    failed = [row for row in merged["cases"] if row["status"] == "failed"]
    assert sorted(row["case"] for row in failed) == sorted(case.case_id for case in plan.units["128x64/layer1"])
    assert all(row["device_index"] == 1 and "exit code 3" in row["reason"] for row in failed)
    assert {row.get("aa_of") for row in failed} == {None, "128x64/sdpa_math/layer1"}
    assert merged["complete"] is False


def test_the_e2e_table_is_one_more_unit_run_by_one_worker(tmp_path):
    path = tmp_path / "with-e2e.toml"
    path.write_text(TINY_SUITE.replace('metrics = ["timing"]', 'metrics = ["timing", "e2e"]')
                    + '[e2e]\nmodel = "tiny"\nresolutions = ["128x128"]\n')
    plan = spread.spread_plan(load_suite(path), 3)
    assert spread.E2E_GROUP in plan.costs and len(plan.costs) == 5
    holders = [units for units in plan.assignment if spread.E2E_GROUP in units]
    assert len(holders) == 1
    suite = spread.Selection(str(path)).load()
    for position, units in enumerate(plan.assignment):  # each worker's own plan gives it the same units
        payload = spread.worker_payload(3, position, tmp_path / f"gpu{position}", "cpu")
        assert spread.worker_units(suite, payload) == (plan, units)
        mine = spread.worker_suite(suite, plan, units)
        assert ("e2e" in mine.metrics) is (units is holders[0])
        assert {case.problem.resolution for case in mine.cases()} == {
            unit for unit in units if unit != spread.E2E_GROUP}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a host without CUDA")
@pytest.mark.parametrize("extra, message", [
    ([], "--gpus 2: this host has 0 CUDA device(s)"),
    (["--methods", "no_such_method"], "no_such_method"),
], ids=["too-few-cards", "unknown-method"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "existing-out"])
def test_refused_input_is_one_line_exit_2_and_leaves_no_worker_behind(suite_path, tmp_path, capsys, extra, message,
                                                                      existing):
    from harness.cli import main

    out = tmp_path / "run"
    if existing:  # an empty directory given with --out: it stays, empty
        out.mkdir()
    assert main(["run", str(suite_path), "--gpus", "2", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert (list(out.iterdir()) == []) if existing else not out.exists()  # what the run claimed is gone
    assert list(tmp_path.glob(".spread-*")) == []  # with the workers' logs


def test_the_workers_start_before_the_parent_imports_torch(suite_path, tmp_path):
    """``run --gpus N`` starts its workers and hands them their work first: their start-up and their run overlap
    the parent's torch import (a warm worker starts its run at once)."""
    spy = ("import sys\n"
           "import harness.core.spread.pool as pool\n"
           "real = pool.start_workers\n"
           "def start_workers(*args, **kwargs):\n"
           "    print('torch imported:', 'torch' in sys.modules)\n"
           "    return real(*args, **kwargs)\n"
           "def hand_out(self, *args):\n"
           "    print('torch imported:', 'torch' in sys.modules)\n"
           "    self.close()\n"
           "    raise SystemExit(0)\n"
           "pool.start_workers = start_workers\n"
           "pool.Pool.hand_out = hand_out\n"
           "from harness.cli import main\n"
           f"main(['run', {str(suite_path)!r}, '--gpus', '2', '--out', {str(tmp_path / 'run')!r}])\n")
    done = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["torch", "imported:", "False"] * 2, done.stderr  # started, then handed out


def test_the_warm_up_times_each_methods_probe_and_the_log_line_names_the_slow_ones(suite_path, tmp_path):
    """Where a worker's start-up goes is in its log: the imports, the CUDA context and each method's probe."""
    selection = spread.Selection(suite=str(suite_path))
    steps = spread.warm_up(selection.load(), "cpu")
    assert list(steps) == ["sdpa_math"] and steps["sdpa_math"] >= 0  # no CUDA context on the CPU
    line = spread.warm_up_line(4.21, {"CUDA context": 0.93, "fa4_dense": 6.01, "sdpa_math": 0.01}, 11.2)
    assert line == ("warmed up 11.2 s after start (interpreter, imports and the suite 4.2 s; CUDA context 0.9 s, "
                    "fa4_dense 6.0 s); waiting for the payload")
    out = spread.run_spread(selection, 2, tmp_path / "run", device="cpu", echo=lambda line: None)
    assert "warmed up" in (out / "gpu0.log").read_text() and "imports and the suite" in (out / "gpu0.log").read_text()


def test_a_card_without_units_is_released_and_the_run_is_complete(tmp_path, suite_path):
    selection = spread.Selection(suite=str(suite_path), resolutions=["64x64", "128x64"])
    out = spread.run_spread(selection, 3, tmp_path / "run", device="cpu", echo=lambda line: None)
    results = load_results(out)
    cards = results["env"]["spread"]["cards"]
    assert results["complete"] is True and len(cards) == 2  # the third card had nothing to run
    assert len({row["device_index"] for row in results["cases"]}) == 2
    assert "units: none" in (out / "gpu2.log").read_text()
    assert not (out / "gpu2").exists()
    assert list(tmp_path.glob(".spread-*")) == []  # every log moved into the run directory


@pytest.mark.parametrize("visible, index, card", [(None, 1, "1"), ("4,5", 1, "5"), ("GPU-a, GPU-b", 0, "GPU-a")])
def test_each_worker_sees_its_own_card_of_the_parents_visible_devices(monkeypatch, visible, index, card):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    env = spread.card_env(index)
    assert env["CUDA_VISIBLE_DEVICES"] == card and env["NCCL_NVLS_ENABLE"] == "0"


def test_an_interrupt_while_handing_out_work_stops_every_worker_and_marks_the_run_incomplete(tmp_path, suite_path):
    selection = spread.Selection(suite=str(suite_path))
    pool = spread.start_workers(selection, 2, tmp_path / "run", device="cpu")

    def interrupt(line):  # Ctrl-C right after the first card got its payload
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spread.run_spread(selection, 2, tmp_path / "run", device="cpu", echo=interrupt, pool=pool)
    assert all(worker.returncode is not None and worker.exited_s is not None for worker in pool.workers)
    results = load_results(tmp_path / "run")
    assert results["complete"] is False
    planned = {case.case_id for case in selection.load().cases()}
    assert {row["case"] for row in results["cases"]} <= planned
    assert all(row["status"] == "failed" for row in results["cases"])  # the dispatched card was stopped
