"""The plan of a spread run: which cases each card runs, from an estimated cost per unit of work.

Units: with one card, or when splitting does not help, a unit is a *problem group* (every case of one
resolution, keyed ``"1024x1024"``), timed interleaved on one card exactly as in a one-GPU run. With N > 1
cards each group is also cut into *sub-groups*, one per sliding phase: every case of one (resolution,
layer), keyed ``"1024x1024/layer1"``. A sub-group never splits: its cases and their A/A twins (a twin has
its original's layer) stay on one card, timed interleaved. The suite's [e2e] table is one more unit, ``"e2e"``.

The rule (`spread_plan`), deterministic for a suite and a card count:
1. units = problem groups; assign them longest first, each onto the least loaded card (ties: the lowest
   index) (`assign`);
2. if N > 1, do the same with the sub-groups, and keep that finer plan only when its busiest card is
   estimated at least 10 % lighter than the first plan's (`SPLIT_GAIN`): a split group loses its dense
   anchor on one card and its cases are timed beside other neighbours, which is worth it only for a real gain.

The cost model (`unit_cost_s`), in rough seconds, for a machine whose compile caches are warm (the plan
balances the runs that repeat, e.g. CI): per case a fixed setup (prepare, correctness check, metrics) and
its timing, which ends at max_samples calls or at the budget, whichever comes first, but never before
min_samples calls (a call costs its problem's dense FLOPs at an effective rate over a suite's methods, most
of them sparse, plus the harness's own per-call cost: L2 flush, launch, events); plus, per unit, the first
call of each method in it, unless the workers are warm (`harness.core.spread.warm`: every kernel in memory
from their earlier runs; ``first_calls=False``). Calibrated on an H200 (bench-ci, wall records of warm
workers, 2026-11-28: 1024x1024 0.52 ms a call, 1536x1024 0.79 ms, 2048x2048 at the 600 ms budget; prepare and
metrics 0.04-0.08 s a case). Triton, cuDNN and FA4 load their kernels from the on-disk caches in a fresh
process (FA4's is switched on by `baselines.fa4`: a few ms), Flex traces again in every process (0.2-0.4 s
per shape); what every process pays once (imports, CUDA, probes: 10-15 s) is not the plan's to balance. A
cold machine compiles FA4 once per mask (6-9 s) on its first run. The suites run the dense methods at layer
0 only (`Suite.entry_layers`), so a layer > 0
sub-group on another card than its layer 0 is timed without its resolution's dense anchor on its card (the
gate then judges its cases on absolute time, saying why): `Plan.unanchored` names those units.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from harness.core.cases import CaseSpec, Suite
from harness.measure.timing import TimingPolicy

E2E_GROUP = "e2e"
SETUP_S_PER_CASE = 0.06
COMPILE_S = {"flex": 0.35}  # engine word in the family -> seconds of its first call, once per unit
COMPILE_S_OTHER = 0.05
ATTENTION_FLOPS_PER_S = 1e15  # dense FLOPs a second over a suite's method mix (H200; most methods sparse)
CALL_OVERHEAD_S = 2.7e-4  # per timed call besides the kernel: L2 flush, launch, events (H200)
SPLIT_GAIN = 0.9  # a split plan's busiest card must be estimated at most this fraction of the whole plan's
E2E_COST_S = 120.0


def unit_key(resolution: str, layer: int | None = None) -> str:
    return resolution if layer is None else f"{resolution}/layer{layer}"


def units_of(suite: Suite, split: bool) -> dict[str, list[CaseSpec]]:
    """``{unit key: cases}`` in the suite's plan order: problem groups, or (resolution, layer) sub-groups."""
    units: dict[str, list[CaseSpec]] = {}
    for case in suite.cases():
        key = unit_key(case.problem.resolution, case.problem.layer if split else None)
        units.setdefault(key, []).append(case)
    if "e2e" in suite.metrics and suite.e2e is not None:
        units[E2E_GROUP] = []
    return units


def case_cost_s(case: CaseSpec, timing: dict) -> float:
    policy = {**asdict(TimingPolicy()), **timing}
    call_s = case.problem.dense_flops / ATTENTION_FLOPS_PER_S + CALL_OVERHEAD_S
    timed_s = max(policy["min_samples"] * call_s, min(policy["max_samples"] * call_s, policy["budget_ms"] / 1e3))
    return SETUP_S_PER_CASE + policy["warmup_ms"] / 1e3 + timed_s


def _compile(case: CaseSpec) -> tuple[str, float]:
    """(the method, the seconds of its first call in a unit): whatever its layers, a method's kernels come
    from the on-disk caches once per process."""
    family = str(case.spec.get("method", case.method.name))
    seconds = next((s for word, s in COMPILE_S.items() if word in family), COMPILE_S_OTHER)
    return case.method.name, seconds


def unit_cost_s(unit: str, cases: list[CaseSpec], timing: dict, first_calls: bool = True) -> float:
    if unit == E2E_GROUP:
        return E2E_COST_S
    timed = sum(case_cost_s(case, timing) for case in cases)
    return timed + (sum(dict(map(_compile, cases)).values()) if first_calls else 0.0)


def assign(costs: dict[str, float], workers: int) -> list[list[str]]:
    """Units per worker: longest first onto the least loaded worker (ties: lowest index); each unit once.
    Deterministic for the same costs, whatever their dict order."""
    if workers < 1:
        raise ValueError(f"--gpus must be at least 1, got {workers}")
    loads, assigned = [0.0] * workers, [[] for _ in range(workers)]
    for unit in sorted(costs, key=lambda u: (-costs[u], u)):
        target = min(range(workers), key=lambda i: (loads[i], i))
        assigned[target].append(unit)
        loads[target] += costs[unit]
    return assigned


@dataclass(frozen=True)
class Plan:
    """The units, their estimated costs and which card runs which (``assignment[i]``: the i-th card's)."""

    split: bool  # the units are (resolution, layer) sub-groups
    units: dict[str, list[CaseSpec]]
    costs: dict[str, float]
    assignment: list[list[str]]
    first_calls: bool = True  # the costs count each method's first call per unit (fresh workers)

    @property
    def loads(self) -> list[float]:
        return [sum(self.costs[u] for u in units) for units in self.assignment]

    def parts(self, units: Iterable[str]) -> list[tuple[str, int]]:
        """The (resolution, layer) pairs of some units' cases, for `Suite.select(parts=...)`."""
        pairs = (case.problem for unit in units for case in self.units[unit])
        return list(dict.fromkeys((p.resolution, p.layer) for p in pairs))

    def unanchored(self) -> list[str]:
        """Units whose resolution has a dense reference in the plan, but none on the unit's card."""
        card = {unit: index for index, units in enumerate(self.assignment) for unit in units}
        anchored = {(case.problem.resolution, card[unit]) for unit, cases in self.units.items() for case in cases
                    if case.method.dense_reference and not case.twin}
        with_anchor = {resolution for resolution, _ in anchored}
        return [unit for unit, cases in self.units.items() if cases and cases[0].problem.resolution in with_anchor
                and (cases[0].problem.resolution, card[unit]) not in anchored]

    def describe(self) -> dict:
        """What ``env.spread`` records about the plan."""
        return {"unit": "resolution/layer" if self.split else "resolution", "estimated_cost_s": self.costs,
                "first_calls_counted": self.first_calls, "unanchored": self.unanchored()}


def _plan(suite: Suite, workers: int, split: bool, first_calls: bool = True) -> Plan:
    units = units_of(suite, split)
    costs = {unit: unit_cost_s(unit, cases, dict(suite.timing), first_calls) for unit, cases in units.items()}
    return Plan(split, units, costs, assign(costs, workers), first_calls)


def spread_plan(suite: Suite, workers: int, first_calls: bool = True) -> Plan:
    """The plan by the module's rule: problem groups, or with N > 1 sub-groups when that is estimated
    `SPLIT_GAIN` lighter on the busiest card. ``first_calls``: False when every worker is warm."""
    whole = _plan(suite, workers, split=False, first_calls=first_calls)
    if workers < 2:
        return whole
    finer = _plan(suite, workers, split=True, first_calls=first_calls)
    return finer if max(finer.loads) <= SPLIT_GAIN * max(whole.loads) else whole
