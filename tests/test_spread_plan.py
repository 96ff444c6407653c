"""The plan of a spread run (`harness.core.spread.plan`), without running anything: the assignment is
deterministic and balanced; on the shipped suites every case reaches exactly one card through the workers'
own selection (payload -> `Suite.select(parts=...)`), A/A twins with their originals, sub-groups whole per
(resolution, layer); the finer plan only when it is estimated faster; the bench-ci balance at 2 cards."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness.core import spread
from harness.core.spread import plan as plan_module
from harness.core.suite import load_suite

# ---- the assignment ----------------------------------------------------------------------------------------

COSTS = {
    "equal": {f"g{i}": 1.0 for i in range(7)},
    "skewed": {"a": 10.0, "b": 6.0, "c": 5.0, "d": 4.0, "e": 1.0},
    "one": {"only": 3.0},
}


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("costs", sorted(COSTS))
def test_assign_covers_every_unit_once_and_ignores_dict_order(costs, workers):
    costs = COSTS[costs]
    assignment = spread.assign(costs, workers)
    assert len(assignment) == workers
    assert sorted(unit for units in assignment for unit in units) == sorted(costs)  # every unit, exactly once
    for order in itertools.islice(itertools.permutations(costs), 6):
        assert spread.assign({u: costs[u] for u in order}, workers) == assignment


@pytest.mark.parametrize(("costs", "workers", "worst"), [
    (COSTS["equal"], 3, 3.0),  # 7 equal units on 3 workers: 3 + 2 + 2
    (COSTS["skewed"], 2, 14.0),  # {a, d} and {b, c, e}: 14 is the best split of these (no subset sums to 13)
])
def test_assign_balances_by_cost(costs, workers, worst):
    loads = [sum(costs[u] for u in units) for units in spread.assign(costs, workers)]
    assert max(loads) == worst


def test_assign_rejects_no_worker():
    with pytest.raises(ValueError, match="--gpus"):
        spread.assign({"a": 1.0}, 0)


# ---- the shipped suites, through the workers' selection ----------------------------------------------------

SUITES = ["bench-ci", "bench-2048"]


def _worker_cases(name: str, gpus: int, first_calls: bool = True) -> tuple[spread.Plan, list[list]]:
    """The parent's plan, and per card the cases its worker would run (payload -> its own plan -> cases)."""
    suite = spread.Selection(name).load()
    plan = spread.spread_plan(suite, gpus, first_calls)
    per_card = []
    for position in range(gpus):
        payload = spread.worker_payload(gpus, position, Path("gpu"), "cpu", first_calls)
        own, units = spread.worker_units(suite, payload)
        assert own == plan  # the worker's plan is the parent's
        per_card.append(spread.worker_suite(suite, own, units).cases() if units else [])
    return plan, per_card


@pytest.mark.parametrize("first_calls", [True, False], ids=["fresh", "warm"])
@pytest.mark.parametrize("gpus", [1, 2, 3, 4])
@pytest.mark.parametrize("name", SUITES)
def test_every_case_lands_on_exactly_one_card_with_its_twin_and_its_sub_group(name, gpus, first_calls):
    plan, per_card = _worker_cases(name, gpus, first_calls)
    expected = [case.case_id for case in load_suite(name).cases()]
    ran = Counter(case.case_id for cases in per_card for case in cases)
    assert sorted(ran.elements()) == sorted(expected)  # each case once, none added
    card_of = {case.case_id: index for index, cases in enumerate(per_card) for case in cases}
    for index, cases in enumerate(per_card):
        for case in cases:
            if case.twin:
                assert card_of[case.aa_of] == index, f"{case.case_id} away from its original"
    # a (resolution, layer) sub-group never splits; with whole groups a resolution never splits
    cards_of = defaultdict(set)
    for index, cases in enumerate(per_card):
        for case in cases:
            cards_of[case.problem.resolution, case.problem.layer if plan.split else None].add(index)
    assert all(len(cards) == 1 for cards in cards_of.values()), cards_of
    if gpus == 1:
        assert not plan.split and sorted(plan.assignment[0]) == sorted(plan.units)


@pytest.mark.parametrize("name", SUITES)
def test_sub_groups_are_one_per_resolution_and_layer(name):
    suite = load_suite(name)
    units = spread.units_of(suite, split=True)
    for key, cases in units.items():
        assert {f"{c.problem.resolution}/layer{c.problem.layer}" for c in cases} == {key}
    assert set(units) == {f"{c.problem.resolution}/layer{c.problem.layer}" for c in suite.cases()}
    assert list(spread.units_of(suite, split=False)) == list(suite.resolutions)


@pytest.mark.parametrize("gpus", [1, 2, 3, 4])
@pytest.mark.parametrize("name", ["bench-ci", "bench-2048", "bench-1024", "kernel-bench", "smoke"])
def test_the_finer_plan_is_taken_only_when_estimated_clearly_lighter(name, gpus):
    suite = load_suite(name)
    chosen = spread.spread_plan(suite, gpus)
    whole = plan_module._plan(suite, gpus, split=False)
    assert max(chosen.loads) <= max(whole.loads)
    finer = plan_module._plan(suite, gpus, split=True)
    assert chosen.split == (gpus > 1 and max(finer.loads) <= plan_module.SPLIT_GAIN * max(whole.loads))


def _one_card_s(suite) -> float:
    return sum(spread.spread_plan(suite, 1).loads)


def test_bench_ci_on_two_cards_keeps_whole_groups_and_at_most_0_6_of_one():
    """Fresh workers: 2048 alone on one card, 1536x1024 and 1024 on the other; no group loses its anchor."""
    suite = load_suite("bench-ci")
    two = spread.spread_plan(suite, 2)
    assert not two.split and two.unanchored() == []
    assert sorted(map(sorted, two.assignment)) == [["1024x1024", "1536x1024"], ["2048x2048"]]
    assert max(two.loads) <= 0.6 * _one_card_s(suite)
    assert max(spread.spread_plan(suite, 3).loads) < max(two.loads)  # a third card still helps


def test_warm_workers_pay_no_first_calls_so_bench_ci_splits_2048_by_layer():
    """Without first calls 2048's layer 0 alone is half the suite: its layer 1 goes to the other card."""
    suite = load_suite("bench-ci")
    cold, warm = spread.spread_plan(suite, 2), spread.spread_plan(suite, 2, first_calls=False)
    assert sum(warm.costs.values()) < sum(cold.costs.values())
    assert warm.split and not warm.first_calls and warm.describe()["first_calls_counted"] is False
    card = {u: i for i, units in enumerate(warm.assignment) for u in units}
    assert card["2048x2048/layer1"] != card["2048x2048/layer0"]
    assert "2048x2048/layer1" in warm.unanchored()
    assert max(warm.loads) <= 0.55 * sum(spread.spread_plan(suite, 1, first_calls=False).loads)


def test_one_heavy_group_is_split_by_layer_and_its_other_layers_named_unanchored():
    """bench-2048 is one problem group: on two cards its layer 0 (with the dense anchors) takes one card and
    the other phases the other, timed without a dense method beside them (the gate then uses absolute time)."""
    suite = load_suite("bench-2048")
    two = spread.spread_plan(suite, 2)
    assert two.split
    card = {u: i for i, units in enumerate(two.assignment) for u in units}
    expected = [u for u in two.units if card[u] != card["2048x2048/layer0"]]
    assert two.unanchored() == expected and expected
    assert spread.spread_plan(suite, 1).unanchored() == []
    assert two.describe()["unanchored"] == expected and two.describe()["unit"] == "resolution/layer"


@pytest.mark.parametrize("method, per_unit_s", [
    ("hilberta_fa4_t16", plan_module.COMPILE_S_OTHER),  # from FA4's disk cache: once, whatever the layers
    ("hilberta_flex_t16", plan_module.COMPILE_S["flex"]),  # Flex traces again in every process
    ("hilberta_t16", plan_module.COMPILE_S_OTHER),
])
def test_first_calls_are_paid_once_per_unit(method, per_unit_s):
    suite = load_suite("bench-2048")
    cases = [c for c in suite.cases() if c.method.name == method]
    assert len({c.problem.layer for c in cases}) == 4
    setup = sum(plan_module.case_cost_s(c, dict(suite.timing)) for c in cases)
    assert spread.unit_cost_s("u", cases, dict(suite.timing)) == pytest.approx(setup + per_unit_s)
