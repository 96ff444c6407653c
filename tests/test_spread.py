"""Spreading a suite over several GPUs (`harness.core.spread`), on the CPU: the plan is deterministic and
covers every group once; real workers (the ordinary runner on "cpu") merge into one valid results.json with
``device_index`` on every row; a worker that dies turns only its own cases into "failed" rows."""

from __future__ import annotations

import itertools
import json
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


# ---- the plan ----------------------------------------------------------------------------------------------

COSTS = {
    "equal": {f"g{i}": 1.0 for i in range(7)},
    "skewed": {"a": 10.0, "b": 6.0, "c": 5.0, "d": 4.0, "e": 1.0},
    "one": {"only": 3.0},
}


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("costs", sorted(COSTS))
def test_plan_covers_every_group_once_and_ignores_dict_order(costs, workers):
    costs = COSTS[costs]
    assignment = spread.plan(costs, workers)
    assert len(assignment) == workers
    placed = [group for groups in assignment for group in groups]
    assert sorted(placed) == sorted(costs)  # every group, exactly once
    for order in itertools.islice(itertools.permutations(costs), 6):
        assert spread.plan({g: costs[g] for g in order}, workers) == assignment


@pytest.mark.parametrize(("costs", "workers", "worst"), [
    (COSTS["equal"], 3, 3.0),  # 7 equal groups on 3 workers: 3 + 2 + 2
    (COSTS["skewed"], 2, 14.0),  # {a, d} and {b, c, e}: 14 is the best split of these (no subset sums to 13)
])
def test_plan_balances_by_cost(costs, workers, worst):
    loads = [sum(costs[g] for g in groups) for groups in spread.plan(costs, workers)]
    assert max(loads) == worst


def test_plan_rejects_no_worker():
    with pytest.raises(ValueError, match="--gpus"):
        spread.plan({"a": 1.0}, 0)


def test_bench_ci_groups_are_its_resolutions_largest_costs_most():
    costs = spread.group_costs(load_suite("bench-ci"))
    assert list(costs) == ["1024x1024", "1536x1024", "2048x2048"]
    assert costs["2048x2048"] > costs["1536x1024"] > costs["1024x1024"]
    assert sorted(g for groups in spread.plan(costs, 2) for g in groups) == sorted(costs)


# ---- real workers on the CPU -------------------------------------------------------------------------------

def _failing_on(index: int | None):
    """A launcher running the real worker, except on card ``index``, which exits 3 after a message."""
    def launch(worker, payload_path):
        if worker.index == index:
            return [sys.executable, "-c", "import sys; print('simulated crash of this card'); sys.exit(3)"]
        return spread.worker_command(payload_path)
    return launch


@pytest.mark.parametrize("failing", [None, 1], ids=["all-ok", "gpu1-dies"])
def test_spread_run_merges_one_valid_results_file(tmp_path, suite_path, failing):
    selection = spread.Selection(suite=str(suite_path))
    out = spread.run_spread(selection, 2, tmp_path / "run", device="cpu", launcher=_failing_on(failing),
                            echo=lambda line: None)
    results = load_results(out)  # validates the merged file
    suite = selection.load()
    planned = [case.case_id for case in suite.cases()]
    assert [row["case"] for row in results["cases"]] == planned  # each case once, in plan order
    assignment = spread.plan(spread.group_costs(suite), 2)
    card_of = {group: index for index, groups in enumerate(assignment) for group in groups}
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
    assert not list(out.glob(".*.tmp"))  # the atomic write left no temp file


def _worker_dir(root, index: int, rows: list[dict], complete: bool = True):
    directory = root / f"gpu{index}"
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({
        "schema": 2, "run_id": f"w{index}", "env": {"gpu_name": "Card", "gpu_uuid": f"GPU-{index}"},
        "policy": {}, "complete": complete, "aa_pairs": [{"a": "x", "b": "y"}] if index else [],
        "schedule_orders": {f"g{index}": [[0]]}, "cases": rows}))
    worker = spread.Worker(index, [], directory)
    worker.returncode = 0
    return worker


def test_merge_unites_per_group_fields_and_refuses_a_case_run_twice(tmp_path, suite_path):
    suite = load_suite(suite_path)
    res = [case.problem.resolution for case in suite.cases()]
    row = {"kind": "kernel", "case": "a", "status": "ok", "reason": None}
    workers = [_worker_dir(tmp_path, 0, [row]), _worker_dir(tmp_path, 1, [{**row, "case": "b"}])]
    workers[0].groups, workers[1].groups = res[:1], res[1:2]
    merged = spread.merge(suite, workers, "run", {})
    assert merged["schedule_orders"] == {"g0": [[0]], "g1": [[0]]}
    assert merged["aa_pairs"] == [{"a": "x", "b": "y"}]
    assert [r["extra"]["device"]["uuid"] for r in merged["cases"] if r["case"] in "ab"] == ["GPU-0", "GPU-1"]
    twice = [_worker_dir(tmp_path / "twice", i, [row]) for i in (0, 1)]
    twice[0].groups, twice[1].groups = res[:1], res[1:2]
    with pytest.raises(SchemaError, match="appears twice"):
        spread.merge(suite, twice, "run", {})


def test_the_e2e_table_is_one_more_group_run_by_one_worker(tmp_path):
    path = tmp_path / "with-e2e.toml"
    path.write_text(TINY_SUITE.replace('metrics = ["timing"]', 'metrics = ["timing", "e2e"]')
                    + '[e2e]\nmodel = "tiny"\nresolutions = ["128x128"]\n')
    costs = spread.group_costs(load_suite(path))
    assert spread.E2E_GROUP in costs and len(costs) == 5
    assignment = spread.plan(costs, 3)
    holders = [groups for groups in assignment if spread.E2E_GROUP in groups]
    assert len(holders) == 1
    payload = spread.worker_payload(spread.Selection(str(path)), holders[0], tmp_path / "gpu0", "cuda:0")
    assert payload["e2e"] is True and spread.E2E_GROUP not in payload["resolutions"]
    others = [g for g in assignment if g not in holders]
    assert all(spread.worker_payload(spread.Selection(str(path)), g, tmp_path, "cpu")["e2e"] is False
               for g in others)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_gpus_beyond_the_host_is_one_line_and_exit_2(suite_path, tmp_path, capsys):
    from harness.cli import main

    assert main(["run", str(suite_path), "--gpus", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --gpus 2: this host has 0 CUDA device(s)"]
    assert not (tmp_path / "run").exists()  # refused before claiming the directory
