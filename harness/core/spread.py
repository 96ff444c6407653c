"""Spread one suite run over the GPUs of one host: plan, one worker process per GPU, one merged results.json.

The unit of spreading is a *problem group* (all cases of one resolution): its cases are timed interleaved
on one card, as in a one-GPU run, so nothing about the timing changes but which card ran it. The suite's
[e2e] table, when it has one, is one more group. `plan` assigns the groups deterministically, balanced by
an estimated cost (longest first, each onto the least loaded card, ties to the lowest index): every group
lands exactly once.

`run_spread` claims the results directory, writes one payload per card and starts ``python -m
harness.core.spread PAYLOAD`` with ``CUDA_VISIBLE_DEVICES=<index>`` (NVLink multicast off), each an ordinary
`harness.core.runner.run_suite` of its groups into ``<out>/gpu<index>/`` (its own env.json, traffic
reports and log). NVML finds its card by UUID, so power stays per card. When all have ended, `merge`
writes ONE results.json atomically: every row gains ``device_index`` and ``extra.device`` (the card's
name and UUID from that worker's fingerprint); the cards and the plan go under ``env.spread``. A worker
that dies takes only its own cases down: each of its cases without a row becomes a "failed" row with the
exit code and the last line of its log; the run is then ``complete: false``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from harness.core.cases import CaseSpec, Suite
from harness.core.paths import RESULTS_ROOT, claim_run_dir
from harness.core.results import (
    ENV_NAME,
    PYTEST_BENCHMARK_NAME,
    RESULTS_NAME,
    ResultsError,
    export_pytest_benchmark,
    load_results,
    utc_now,
    write_json_atomic,
)
from harness.core.schema import SCHEMA_VERSION, Row, SchemaError, validate_results
from harness.measure.timing import TimingPolicy

E2E_GROUP = "e2e"
# Kept off in every worker (KINDS.md): NVLink multicast is not lent on these machines.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# The cost model, in rough seconds: per case a fixed setup (prepare, compile, correctness check) plus its
# timing, which ends at max_samples calls or at the budget, whichever comes first, but never before
# min_samples calls; a call is estimated as dense attention at a rate an H100 reaches. The e2e table is
# one block of its own.
SETUP_S_PER_CASE = 2.0
ATTENTION_FLOPS_PER_S = 4e14
E2E_COST_S = 120.0
# Run-level fields merged across workers: per-group dicts are united, lists concatenated; the rest are
# taken from the first worker that has them.
UNITED = ("schedule_orders",)
CONCATENATED = ("aa_pairs",)
PER_RUN = ("run_id", "suite", "created", "env", "cases", "finished", "complete", "device", "upgrade")


# ---- the plan ----------------------------------------------------------------------------------------------

def problem_groups(suite: Suite) -> dict[str, list[CaseSpec]]:
    """``{resolution: cases}`` in the suite's plan order (the groups the runner times together)."""
    groups: dict[str, list[CaseSpec]] = {}
    for case in suite.cases():
        groups.setdefault(case.problem.resolution, []).append(case)
    return groups


def case_cost_s(case: CaseSpec, timing: dict) -> float:
    policy = {**asdict(TimingPolicy()), **timing}
    call_s = case.problem.dense_flops / ATTENTION_FLOPS_PER_S
    timed_s = max(policy["min_samples"] * call_s, min(policy["max_samples"] * call_s, policy["budget_ms"] / 1e3))
    return SETUP_S_PER_CASE + policy["warmup_ms"] / 1e3 + timed_s


def group_costs(suite: Suite) -> dict[str, float]:
    """The estimated cost of every group of ``suite``, the e2e table included when the suite runs it."""
    costs = {group: sum(case_cost_s(case, dict(suite.timing)) for case in cases)
             for group, cases in problem_groups(suite).items()}
    if "e2e" in suite.metrics and suite.e2e is not None:
        costs[E2E_GROUP] = E2E_COST_S
    return costs


def plan(costs: dict[str, float], workers: int) -> list[list[str]]:
    """Groups per worker: longest first onto the least loaded worker (ties: lowest index); each group once.
    Deterministic for the same costs, whatever their dict order."""
    if workers < 1:
        raise ValueError(f"--gpus must be at least 1, got {workers}")
    loads, assigned = [0.0] * workers, [[] for _ in range(workers)]
    for group in sorted(costs, key=lambda g: (-costs[g], g)):
        target = min(range(workers), key=lambda i: (loads[i], i))
        assigned[target].append(group)
        loads[target] += costs[group]
    return assigned


# ---- the workers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Which suite and which part of it, as ``python -m harness run`` was asked (rebuilt in each worker)."""

    suite: str  # a name in suites/ or a path
    methods: list[str] | None = None
    resolutions: list[str] | None = None
    quick: bool = False
    e2e_runner: str | None = None  # "module:function" that runs the [e2e] table (the caller names it)

    def load(self) -> Suite:
        from harness.core.suite import load_suite

        return load_suite(self.suite).select(methods=self.methods, resolutions=self.resolutions, quick=self.quick)


@dataclass
class Worker:
    index: int  # the card's index on this host
    groups: list[str]
    directory: Path
    process: subprocess.Popen | None = None
    returncode: int | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory.with_suffix(".log")


def worker_payload(selection: Selection, groups: list[str], directory: Path, device: str) -> dict:
    kernel_groups = [g for g in groups if g != E2E_GROUP]
    return {"selection": selection.__dict__, "resolutions": kernel_groups, "e2e": E2E_GROUP in groups,
            "out": str(directory), "device": device}


def worker_command(payload_path: Path) -> list[str]:
    return [sys.executable, "-m", "harness.core.spread", str(payload_path)]


def run_worker(payload: dict) -> Path:
    """Inside a worker: run the assigned groups of the suite with the ordinary runner."""
    from harness.core.runner import optional, run_suite

    selection = Selection(**payload["selection"])
    suite = selection.load().select(resolutions=payload["resolutions"])
    if not payload["e2e"]:
        suite = replace(suite, metrics=suite.metrics - {"e2e"})
    e2e = None
    if payload["e2e"] and selection.e2e_runner:
        module, _, attr = selection.e2e_runner.partition(":")
        e2e, _ = optional(module, attr)
    return run_suite(suite, payload["out"], device=payload["device"], progress=False, e2e=e2e)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


Launcher = Callable[[Worker, Path], list[str]]


def run_spread(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
               device: str = "cuda:0", launcher: Launcher | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run ``selection`` over ``gpus`` (a count, or the card indices) and return the merged results directory.

    ``device`` is the torch device inside each worker (``cuda:0``: its one visible card; ``cpu`` in tests);
    ``launcher`` turns a worker and its payload file into a command (default: `worker_command`).
    """
    indices = list(range(gpus)) if isinstance(gpus, int) else list(gpus)
    if device.startswith("cuda"):
        import torch

        if max(indices, default=0) >= torch.cuda.device_count():
            raise ValueError(f"--gpus {len(indices)}: this host has {torch.cuda.device_count()} CUDA device(s)")
    suite = selection.load()
    costs = group_costs(suite)
    assignment = plan(costs, len(indices))
    out_dir, run_id = claim_run_dir(out_dir, suite.name, RESULTS_ROOT)
    workers = [Worker(index, groups, out_dir / f"gpu{index}") for index, groups in zip(indices, assignment)]
    launcher = launcher or (lambda worker, payload_path: worker_command(payload_path))
    for worker in workers:
        if not worker.groups:
            continue
        payload_path = out_dir / f"gpu{worker.index}.payload.json"
        write_json_atomic(payload_path, worker_payload(selection, worker.groups, worker.directory, device))
        env = {**os.environ, **NO_MULTICAST_ENV, "CUDA_VISIBLE_DEVICES": str(worker.index)}
        with open(worker.log, "w") as log:
            worker.process = subprocess.Popen(launcher(worker, payload_path), stdout=log, stderr=subprocess.STDOUT,
                                              env=env)
        echo(f"gpu{worker.index}: {', '.join(worker.groups)} (estimated {sum(costs[g] for g in worker.groups):.0f} s)"
             f" -> {worker.directory}")
    interrupted = False
    try:
        for worker in workers:
            if worker.process is not None:
                worker.returncode = worker.process.wait()
                echo(f"gpu{worker.index}: exited with code {worker.returncode}")
    except KeyboardInterrupt:  # stop the workers this run started, merge what they left, then stop too
        interrupted = True
        for worker in workers:
            if worker.process is not None:
                worker.process.terminate()
                worker.returncode = worker.process.wait()
    merged = merge(suite, workers, run_id, costs)
    write_json_atomic(out_dir / RESULTS_NAME, merged)
    write_json_atomic(out_dir / ENV_NAME, merged["env"])
    export_pytest_benchmark(merged, out_dir / PYTEST_BENCHMARK_NAME)
    if interrupted:
        raise KeyboardInterrupt
    return out_dir


# ---- the merge ---------------------------------------------------------------------------------------------

def _worker_results(worker: Worker) -> tuple[dict | None, str | None]:
    try:
        return load_results(worker.directory), None
    except ResultsError as exc:
        return None, str(exc)


def _card(results: dict | None) -> dict:
    env = (results or {}).get("env") or {}
    return {"name": env.get("gpu_name"), "uuid": env.get("gpu_uuid")}


def _missing_row(case_id: str, group: str, cases: dict[str, CaseSpec], worker: Worker, why: str) -> dict:
    case = cases.get(case_id)
    fields_ = {"method": case.method.name, "problem": case.problem.to_dict(), "group": case.group} if case else {}
    return Row(kind="kernel" if group != E2E_GROUP else "e2e", case=case_id, status="failed",
               reason=f"the worker on GPU {worker.index} ended without this case: {why}", **fields_).to_dict()


def merge(suite: Suite, workers: list[Worker], run_id: str, costs: dict[str, float]) -> dict:
    """One results dict from the workers' directories, rows in the suite's plan order (validated)."""
    groups = problem_groups(suite)
    cases = {case.case_id: case for cases_ in groups.values() for case in cases_}
    rows: dict[str, dict] = {}
    e2e_rows: list[dict] = []
    first: dict | None = None
    run: dict = dict.fromkeys(UNITED + CONCATENATED)
    cards, complete = [], True
    for worker in workers:
        if not worker.groups:
            continue
        results, unreadable = _worker_results(worker)
        card = {"index": worker.index, **_card(results)}
        cards.append({**card, "groups": worker.groups, "exit_code": worker.returncode,
                      "directory": worker.directory.name, "log": worker.log.name,
                      "complete": bool(results and results.get("complete"))})
        first = first or results
        worker_e2e = 0
        for row in (results or {}).get("cases", []):
            row = {**row, "device_index": worker.index, "extra": {**(row.get("extra") or {}), "device": card}}
            if row.get("kind") == "e2e":
                e2e_rows.append(row)
                worker_e2e += 1
            elif row["case"] in rows:  # the plan puts each group on one card: a second copy is a bug
                raise SchemaError(f"case {row['case']!r} appears twice: on GPU {rows[row['case']]['device_index']} "
                                  f"and on GPU {worker.index}")
            else:
                rows[row["case"]] = row
        for key in UNITED:
            if (results or {}).get(key):
                run[key] = {**(run[key] or {}), **results[key]}
        for key in CONCATENATED:
            if (results or {}).get(key):
                run[key] = [*(run[key] or []), *results[key]]
        ok = worker.returncode == 0 and results is not None and results.get("complete") is True
        complete = complete and ok
        if ok:
            continue
        why = (f"exit code {worker.returncode}: {_last_line(worker.log)}" if worker.returncode
               else unreadable or "the run stopped early (complete: false)")
        missing = [case.case_id for group in worker.groups if group != E2E_GROUP for case in groups[group]]
        missing += [E2E_GROUP] if E2E_GROUP in worker.groups and not worker_e2e else []
        for case_id in missing:
            if case_id not in rows:
                group = E2E_GROUP if case_id == E2E_GROUP else cases[case_id].problem.resolution
                row = {**_missing_row(case_id, group, cases, worker, why), "device_index": worker.index}
                if group == E2E_GROUP:
                    e2e_rows.append(row)
                else:
                    rows[case_id] = row
    ordered = [rows.pop(case_id) for case_id in cases if case_id in rows] + list(rows.values()) + e2e_rows
    base = {key: value for key, value in (first or {}).items() if key not in PER_RUN and key not in run}
    env = dict((first or {}).get("env") or {})
    env["spread"] = {"gpus": len(workers), "cards": cards, "estimated_cost_s": costs,
                     "assignment": {f"gpu{w.index}": w.groups for w in workers}}
    merged = {"schema": SCHEMA_VERSION, "run_id": run_id, "suite": (first or {}).get("suite", suite.name),
              "created": (first or {}).get("created", utc_now()), "env": env, **base,
              **{key: value for key, value in run.items() if value is not None},
              "device": f"{len(workers)} GPUs (spread by problem group)", "finished": utc_now(),
              "complete": complete, "cases": ordered}
    return validate_results(merged)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.core.spread PAYLOAD.json (started by `python -m harness run --gpus N`)",
              file=sys.stderr)
        return 2
    run_worker(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
