"""The merge of a spread run: the workers' results directories -> ONE results dict (validated).

Every row gains ``device_index`` and ``extra.device`` (the card's name and UUID from that worker's
fingerprint); rows come in the suite's plan order, their ``derived`` speedups recomputed against the dense
rows of their problem timed on the same card (a sub-group without a dense method on its card gets none: a
figure counts only against a baseline timed beside it). Run-level fields: ``aa_pairs`` are concatenated;
``schedule_orders`` and ``schedule.cases`` are per timed group, which a worker keys by resolution: a
resolution whose sub-groups ran on several cards gets one key per card, ``"<resolution>/layer1"`` (or
``"<resolution>/layer1+layer3"``), so no card's orders overwrite another's; ``schedule.rounds`` is the
fewest of any card; the rest is taken from the first worker that has it. ``env.spread`` holds the cards
(with their units, exit code, log, ceilings and wall time) and the plan (`Plan.describe`). A worker that dies takes
only its own cases down: each of its cases without a row becomes a "failed" row with the exit code and the
last line of its log; the run is then ``complete: false``.
"""

from __future__ import annotations

from harness.core.cases import CaseSpec, Suite
from harness.core.results import ResultsError, load_results, utc_now
from harness.core.schema import SCHEMA_VERSION, Row, SchemaError, validate_results
from harness.core.spread.plan import E2E_GROUP, Plan
from harness.core.spread.pool import Worker
from harness.measure import derived

# Run-level fields merged across workers (below); the rest are per run or taken from the first worker.
PER_GROUP = ("schedule_orders", "schedule")
CONCATENATED = ("aa_pairs",)
PER_RUN = ("run_id", "suite", "created", "env", "cases", "finished", "complete", "device", "upgrade", "wall")


def _worker_results(worker: Worker) -> tuple[dict | None, str | None]:
    try:
        return load_results(worker.directory), None
    except ResultsError as exc:
        return None, str(exc)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _missing_row(case_id: str, cases: dict[str, CaseSpec], worker: Worker, why: str) -> dict:
    case = cases.get(case_id)
    fields_ = {"method": case.method_name, "problem": case.problem.to_dict(), "group": case.group,
               "aa_of": case.aa_of} if case else {}
    return Row(kind="e2e" if case_id == E2E_GROUP else "kernel", case=case_id, status="failed",
               reason=f"the worker on GPU {worker.index} ended without this case: {why}",
               device_index=worker.index, **fields_).to_dict()


def group_keys(plan: Plan, workers: list[Worker]) -> dict[tuple[int, str], str]:
    """(card index, resolution) -> the merged key of the group that card timed for that resolution."""
    layers: dict[str, set[int]] = {}
    for resolution, layer in plan.parts(plan.units):
        layers.setdefault(resolution, set()).add(layer)
    keys = {}
    for worker in workers:
        held: dict[str, list[int]] = {}
        for resolution, layer in plan.parts(worker.units):
            held.setdefault(resolution, []).append(layer)
        for resolution, mine in held.items():
            whole = set(mine) == layers[resolution]
            keys[worker.index, resolution] = resolution if whole else (
                f"{resolution}/" + "+".join(f"layer{layer}" for layer in sorted(mine)))
    return keys


class _RunFields:
    """The per-group and concatenated run-level fields, gathered worker by worker."""

    def __init__(self, keys: dict[tuple[int, str], str]):
        self.keys, self.orders, self.pairs, self.schedule = keys, {}, [], None

    def _key(self, index: int, group: str, taken: dict) -> str:
        key = self.keys.get((index, group), group)
        return key if key not in taken else f"{key}@gpu{index}"  # never overwrite another card's group

    def add(self, index: int, results: dict) -> None:
        for group, orders in (results.get("schedule_orders") or {}).items():
            self.orders[self._key(index, group, self.orders)] = orders
        self.pairs += results.get("aa_pairs") or []
        schedule = results.get("schedule")
        if not isinstance(schedule, dict):
            return
        if self.schedule is None:
            self.schedule = {**schedule, "cases": {}}
        if "rounds" in schedule:
            self.schedule["rounds"] = min(self.schedule.get("rounds", schedule["rounds"]), schedule["rounds"])
        cases = self.schedule["cases"]
        for group, ids in (schedule.get("cases") or {}).items():
            cases[self._key(index, group, cases)] = ids

    def fields(self) -> dict:
        found = {"schedule": self.schedule, "schedule_orders": self.orders or None, "aa_pairs": self.pairs or None}
        return {key: value for key, value in found.items() if value is not None}


def merge_workers(suite: Suite, workers: list[Worker], run_id: str, plan: Plan) -> dict:
    """One results dict from the workers' directories, rows in the suite's plan order (validated)."""
    cases = {case.case_id: case for case in suite.cases()}  # the plan order
    rows: dict[str, dict] = {}
    e2e_rows: list[dict] = []
    first: dict | None = None
    run = _RunFields(group_keys(plan, workers))
    cards, complete = [], True
    for worker in workers:
        if not worker.units:
            continue
        results, unreadable = _worker_results(worker)
        env = (results or {}).get("env") or {}
        card = {"index": worker.index, "name": env.get("gpu_name"), "uuid": env.get("gpu_uuid")}
        cards.append({**card, "units": worker.units, "estimated_s": sum(plan.costs[u] for u in worker.units),
                      "exit_code": worker.returncode, "started_s": worker.started_s, "exited_s": worker.exited_s,
                      "warm": worker.warm,
                      "directory": worker.directory.name, "log": worker.log.name,
                      "complete": bool(results and results.get("complete")),
                      "ceilings": (results or {}).get("ceilings"), "wall": (results or {}).get("wall")})
        first = first or results
        worker_e2e = 0
        for row in (results or {}).get("cases", []):
            row = {**row, "device_index": worker.index, "extra": {**(row.get("extra") or {}), "device": card}}
            if row.get("kind") == "e2e":
                e2e_rows.append(row)
                worker_e2e += 1
            elif row["case"] in rows:  # the plan puts each unit on one card: a second copy is a bug
                raise SchemaError(f"case {row['case']!r} appears twice: on GPU {rows[row['case']]['device_index']} "
                                  f"and on GPU {worker.index}")
            else:
                rows[row["case"]] = row
        run.add(worker.index, results or {})
        ok = worker.returncode == 0 and results is not None and results.get("complete") is True
        complete = complete and ok
        if ok:
            continue
        why = (f"exit code {worker.returncode}: {_last_line(worker.log)}" if worker.returncode
               else unreadable or "the run stopped early (complete: false)")
        missing = [case.case_id for unit in worker.units for case in plan.units[unit]]
        for case_id in missing:
            if case_id not in rows:
                rows[case_id] = _missing_row(case_id, cases, worker, why)
        if E2E_GROUP in worker.units and not worker_e2e:
            e2e_rows.append(_missing_row(E2E_GROUP, cases, worker, why))
    ordered = [rows.pop(case_id) for case_id in cases if case_id in rows] + list(rows.values())
    derived.add_derived(ordered)  # speedups against the problem's dense rows timed on the same card
    ordered += e2e_rows
    base = {key: value for key, value in (first or {}).items()
            if key not in PER_RUN and key not in PER_GROUP and key not in CONCATENATED}
    env = dict((first or {}).get("env") or {})
    env["spread"] = {"gpus": len(workers), "cards": cards, **plan.describe(),
                     "assignment": {f"gpu{w.index}": w.units for w in workers}}
    merged = {"schema": SCHEMA_VERSION, "run_id": run_id, "suite": (first or {}).get("suite", suite.name),
              "created": (first or {}).get("created", utc_now()), "env": env, **base, **run.fields(),
              "device": f"{len(workers)} GPUs (spread by {'sub-group' if plan.split else 'problem group'})",
              "finished": utc_now(), "complete": complete, "cases": ordered}
    return validate_results(merged)
