"""Run a suite: plan the cases, measure them problem by problem, and write the results directory.

For each problem (one resolution) every case is first made ready on its own through the case lifecycle
(`harness.core.lifecycle`: availability, prepare with ``setup_ms.layout``, the first call with
``setup_ms.first_call``, the correctness check against the exact reference), then its permutation cost and
locality. Then all ready cases of the problem are timed *together* (`time_group`, the one place the runner
times: `harness.measure.timing.time_interleaved`) under NVML sampling; each timed row (samples, their
start times and rounds, the conditions of its own calls) is written at once, A/A twins are compared with
their originals (``aa_pairs``), then one interleaved energy measurement per group and the traffic update
the rows in place. Ceilings once per run on CUDA. A case that goes wrong (an exception, out of memory)
becomes its row with a reason; the run goes on; ``results.json`` is rewritten after every change.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import torch

from baselines.base import PreparedAttention
from harness.core import memory
from harness.core.cases import CaseSpec, Suite
from harness.core.lifecycle import OOM_ERRORS, CaseState, case_row, default_device, error_fields, make_ready, release_memory
from harness.core.paths import RESULTS_ROOT, claim_run_dir
from harness.core.progress import Progress
from harness.core.results import PYTEST_BENCHMARK_NAME, RESULTS_NAME, ResultsFile, export_pytest_benchmark, utc_now
from harness.core.schema import Row
from harness.core.summary import console_table, exit_status, print_summary  # noqa: F401  (the runner's API)
from harness.core.wall import WallClock
from harness.core.suite import SUITES_DIR
from harness.measure import derived, power, stats, timing
from harness.measure.power import unavailable

# The permutation gather is small next to attention: a short budget of its own.
PERMUTE_TIMING = {"warmup_ms": 10.0, "min_samples": 5, "max_samples": 50, "budget_ms": 100.0, "rounds": 1}
# Progress weight of each stage of a case (how long it takes, roughly, relative to preparing one).
STAGE_WEIGHTS = {"prepare": 1, "timing": 1, "power": 1, "traffic": 3}


def optional(module: str, attr: str) -> tuple[Callable | None, str | None]:
    """``(function, None)``, or ``(None, reason)`` when the module is missing or fails to import."""
    try:
        return getattr(importlib.import_module(module), attr), None
    except Exception as exc:  # a missing or broken optional piece disables one measurement, not the run
        return None, f"{module}.{attr} is not available: {type(exc).__name__}: {exc}"


# Runs the [e2e] table of a suite: (section, results file, device) -> rows; harness.apps.e2e gives one.
E2ERunner = Callable[[dict, ResultsFile, torch.device], list]


def time_group(calls: dict[str, Callable[[], object]], policy: timing.TimingPolicy, device: torch.device,
               progress: timing.ProgressFn | None = None) -> tuple[timing.TimingResult | None, dict[str, Exception]]:
    """Time the calls of one problem group interleaved: the one place the runner times. A call that raises is
    dropped and the others are timed again; returns the result for the survivors (None if none) and
    ``{name: error}`` of the dropped."""
    failures: dict[str, Exception] = {}
    pending = dict(calls)
    while pending:
        try:
            return timing.time_interleaved(pending, policy, device, progress), failures
        except timing.TimedFnError as exc:
            failures[exc.name] = exc
            del pending[exc.name]
            release_memory(device)
    return None, failures


@dataclass
class ReadyCase:
    """A case that prepared, ran once and was checked (correct or not): what the timing and metrics need."""

    case: CaseSpec
    state: CaseState
    row: dict

    @property
    def prepared(self) -> PreparedAttention:
        return self.state.prepared


class _Measures:
    """The optional measurement pieces, probed once per run (each may be missing or unusable here)."""

    def __init__(self, suite: Suite, device: torch.device):
        self.power, self.power_reason = self._probe("power", "harness.measure.power", "nvml_available", suite, device)
        self.traffic, self.traffic_reason = self._probe("traffic", "harness.measure.traffic", "ncu_available", suite, device)
        self.locality, self.locality_reason = (optional("baselines.locality", "locality")
                                               if "locality" in suite.metrics else (None, None))

    @staticmethod
    def _probe(metric: str, module: str, probe: str, suite: Suite, device: torch.device):
        if metric not in suite.metrics:
            return None, None
        if device.type != "cuda":
            return None, f"{metric} needs a CUDA device (this run is on {device})"
        check, reason = optional(module, probe)
        if check is None:
            return None, reason
        avail = check()
        return (importlib.import_module(module), None) if avail else (None, avail.reason)


class SuiteRun:
    """One run of a suite into one results directory."""

    def __init__(self, suite: Suite, out_dir: Path, device: torch.device, run_id: str, progress: bool = True,
                 e2e: E2ERunner | None = None):
        self.suite, self.out_dir, self.device, self.e2e = suite, out_dir, device, e2e
        self.wall = WallClock()  # before the probes below: they are part of the run's cost
        self.measures = _Measures(suite, device)
        self.policy = timing.TimingPolicy(**suite.timing)
        self.permute_policy = timing.TimingPolicy(**PERMUTE_TIMING, l2_flush=self.policy.l2_flush)
        self.cases = suite.cases()
        shipped = suite.path.parent == SUITES_DIR
        self.results = ResultsFile(
            out_dir / RESULTS_NAME, run_id=run_id, suite=suite.name if shipped else str(suite.path),
            policy=self.policy.to_dict(),
            extra={"device": str(device), "suite_config": suite.describe(), "finished": None, "complete": False})
        self.progress = Progress(sum(self._weight(case) for case in self.cases), label=suite.name,
                                 enabled=progress)
        self._permute_ms: dict[str, float] = {}
        self._run_origin_s: float | None = None  # host time at which the run's first timed group began

    def _weight(self, case: CaseSpec) -> int:
        weight = STAGE_WEIGHTS["prepare"] + STAGE_WEIGHTS["timing"] * ("timing" in self.suite.metrics)
        for metric in ("power", "traffic"):
            if metric in self.suite.metrics and getattr(self.suite, metric).covers(case):
                weight += STAGE_WEIGHTS[metric]
        return weight

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> Path:
        self.progress.message(f"{self.suite.name}: {len(self.cases)} cases on {self.device} -> {self.out_dir}")
        with self.wall.stage("environment"):
            self.results.write_env(self._environment())
        with self.wall.stage("ceilings"):
            self._ceilings()
        complete = False
        try:
            for _, group in groupby(self.cases, key=lambda case: case.problem.resolution):
                self._run_problem(list(group))
            if "e2e" in self.suite.metrics:
                with self.wall.stage("e2e"):
                    self._run_e2e()
            complete = True
        finally:  # also on Ctrl-C: the file then says the run stopped early, and the export matches it
            self.progress.close()
            self.results.set(finished=utc_now(), complete=complete, wall=self.wall.to_dict())
            export_pytest_benchmark(self.results.data, self.out_dir / PYTEST_BENCHMARK_NAME)
        return self.out_dir

    def _environment(self) -> dict:
        fingerprint, reason = optional("harness.measure.envinfo", "fingerprint")
        try:
            return fingerprint(self.device) if fingerprint else unavailable(reason)
        except Exception as exc:
            return unavailable(f"fingerprint failed: {type(exc).__name__}: {exc}")

    def _ceilings(self) -> None:
        """Dense GEMM and copy ceilings of this card, once per run (absent off CUDA)."""
        measure, reason = optional("harness.measure.ceilings", "measure_ceilings")
        if self.device.type == "cuda":
            try:
                ceilings, reason = measure(self.device) if measure else (None, reason)
            except Exception as exc:  # the ceilings are context for the report, never worth the run
                ceilings, reason = None, f"{type(exc).__name__}: {exc}"
            self.results.set(ceilings=ceilings) if ceilings else self.progress.message(f"no ceilings: {reason}")

    def _record(self, row: dict) -> None:
        """Write the row now: added the first time, updated in place afterwards."""
        written = any(existing["case"] == row["case"] for existing in self.results.cases)
        self.results.update_cases([row]) if written else self.results.add_case(row)

    def _run_problem(self, cases: list[CaseSpec]) -> None:
        problem = cases[0].problem
        with self.wall.stage("prepare", group=problem.resolution):
            ready = self._prepare_group(cases)
        if ready and "timing" in self.suite.metrics:
            with self.wall.stage("timing", group=problem.resolution):
                self._time(ready)
        for item in ready:
            self._record(item.row)
        with self.wall.stage("power", group=problem.resolution):
            self._power(ready)
        with self.wall.stage("metrics", group=problem.resolution):
            for item in ready:
                self._per_case_metrics(item)
                self._finish(item.row, 0)
        rows = [row for row in self.results.cases if row.get("kind") == "kernel"
                and derived.problem_key(row) == derived.problem_key({"problem": problem.to_dict()})]
        self.results.update_cases(derived.add_derived(rows))
        del ready
        release_memory(self.device)

    def _prepare_group(self, cases: list[CaseSpec]) -> list[ReadyCase]:
        """Every case of one problem through its lifecycle up to ready, on random inputs the group's calls
        share; the rows of cases that cannot run are finished here."""
        problem = cases[0].problem
        ready: list[ReadyCase] = []
        skipped = memory.skipped_fields(memory.inputs_estimate(problem), self.device)  # before allocating
        try:
            inputs = None if skipped else problem.random_qkv(self.device, seed=0)  # shared by every method's timing
        except OOM_ERRORS as exc:
            skipped = {"status": "skipped", "reason": f"inputs: out of memory ({str(exc).splitlines()[0]})"}
            inputs = None
        for case in cases:
            self.progress.step(f"prepare {case.case_id}")
            row = case_row(case)
            if case.twin:
                row.update(method=case.method_name, aa_of=case.aa_of, dense_reference=False)  # a control, no reference
            if inputs is None:
                row.update(skipped)
            else:
                ready_case = self._prepare(case, row, inputs)
                if ready_case is not None:
                    ready.append(ready_case)
            if row["status"] not in ("ok", "incorrect"):
                self._finish(row, self._weight(case))
            else:
                self.progress.advance(STAGE_WEIGHTS["prepare"], note="ready")
        return ready

    def _finish(self, row: dict, weight: int) -> None:
        self._record(row)
        self.progress.step(row["case"])
        note = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        if row.get("median_ms"):
            note += f" {row['median_ms']:.4g} ms"
        self.progress.advance(weight, note=note)

    # ---- stages of one case --------------------------------------------------------------------------

    def _prepare(self, case: CaseSpec, row: dict, inputs) -> ReadyCase | None:
        """The case's lifecycle up to ready (`harness.core.lifecycle`), then the permutation cost and
        locality; fills ``row``; None if it cannot run."""
        estimate = memory.case_estimate(case.problem, case.method, self.suite.correctness, self.device)
        too_big = memory.skipped_fields(estimate, self.device)
        if too_big and case.method.availability(self.device):  # skipped with the estimate, not killed by OOM
            row.update(too_big)
            return None
        state = make_ready(case.method, case.problem, self.device, self.suite.correctness, inputs)
        row.update(state.fields)
        if not state.checked:
            return None
        prepared = state.prepared
        if prepared.image_order is not None:
            try:
                row["setup_ms"]["permute"] = self._permute_ms_of(prepared)
            except Exception as exc:
                row.update(error_fields(exc, "permutation"))
                release_memory(self.device)
                return None
        if "locality" in self.suite.metrics:
            row["locality"] = self._locality(prepared)
        return ReadyCase(case, state, row)

    def _permute_ms_of(self, prepared: PreparedAttention) -> float:
        """Median time of gathering [B, L, heads*head_dim] hidden states into the method's order (once per
        forward; the un-permute at the end costs the same again). Cached per order."""
        order = prepared.image_order.to(self.device)
        key = hashlib.sha1(order.cpu().numpy().tobytes()).hexdigest()
        if key not in self._permute_ms:
            p = prepared.problem
            text = torch.arange(p.text_tokens, device=self.device)
            index = torch.cat([text, p.text_tokens + order])
            hidden = torch.randn(p.batch, p.seq_len, p.heads * p.head_dim, device=self.device, dtype=p.torch_dtype)
            samples = timing.time_interleaved({"permute": lambda: hidden.index_select(1, index)},
                                              self.permute_policy, self.device)["permute"]
            self._permute_ms[key] = stats.summarize(samples)["median_ms"]
        return self._permute_ms[key]

    def _locality(self, prepared: PreparedAttention) -> dict:
        if self.measures.locality is None:
            return unavailable(self.measures.locality_reason)
        try:
            return self.measures.locality(prepared, **self.suite.locality)
        except Exception as exc:
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}

    def _time(self, ready: list[ReadyCase]) -> None:
        """Time all ready cases of one problem together (`time_group`); a case that raises is marked."""
        self.progress.step(f"timing {len(ready)} cases of {ready[0].case.problem.resolution}")
        sampler_class, reason = optional("harness.measure.power", "PowerSampler")
        sampler = sampler_class(self.device) if sampler_class else None  # clocks while samples are taken
        calls = {item.case.case_id: item.state.call for item in ready}
        with torch.no_grad(), sampler or contextlib.nullcontext():
            result, failures = time_group(calls, self.policy, self.device, self._timing_progress)
        if sampler is not None and sampler.unavailable_reason is None and result is not None:
            conditions = power.case_conditions(sampler.samples, {cid: result.windows(cid) for cid in result})
        else:
            reason = sampler.unavailable_reason if sampler is not None else reason
            conditions = {cid: unavailable(reason) for cid in calls}
        if result is not None:
            self._schedule(ready[0].case.problem.resolution, result)
            offset = result.origin_s - self._run_origin_s  # samples_t_s count from the run's first timed round
        for item in list(ready):
            cid = item.case.case_id
            if cid in failures:
                item.row.update(error_fields(failures[cid], "timing"))
                ready.remove(item)
                self._finish(item.row, self._weight(item.case) - STAGE_WEIGHTS["prepare"])
                continue
            item.row.update(samples_ms=result[cid], samples_round=result.rounds[cid],
                            samples_t_s=[offset + t for t in result.t_s[cid]],
                            conditions=conditions[cid], **stats.summarize(result[cid], result.rounds[cid]))
            item.row["extra"]["timing"] = result.details[cid]
        self.progress.advance(STAGE_WEIGHTS["timing"] * len(ready), note="timed")
        if result is not None:
            self._compare_twins(ready, result)

    def _schedule(self, group: str, result: timing.TimingResult) -> None:
        """The run's schedule (fewest rounds of any group) and this group's case ids and round orders."""
        self._run_origin_s = result.origin_s if self._run_origin_s is None else self._run_origin_s
        rounds = min(result.schedule["rounds"], (self.results.data.get("schedule") or {}).get("rounds", 1 << 30))
        schedule = {key: result.schedule[key] for key in ("kind", "l2_flush", "seed")}
        cases = {**(self.results.data.get("schedule") or {}).get("cases", {}), group: list(result)}
        orders = {**(self.results.data.get("schedule_orders") or {}), group: result.orders}
        self.results.set(schedule={**schedule, "rounds": rounds, "cases": cases}, schedule_orders=orders)

    def _compare_twins(self, ready: list[ReadyCase], result: timing.TimingResult) -> None:
        """Each timed A/A twin against its original, timed in the same rounds -> results ``aa_pairs``."""
        for original, twin in [(item.case.aa_of, item.case.case_id) for item in ready]:
            if original not in result or twin not in result:  # not a twin (None), or one side failed
                continue
            pair = stats.aa_compare(result[original], result.rounds[original], result[twin], result.rounds[twin],
                                    self.suite.control.limit_pct)
            self.results.set(aa_pairs=[*(self.results.data.get("aa_pairs") or ()), {"a": original, "b": twin, **pair}])

    def _timing_progress(self, name: str, round_index: int, n_samples: int) -> None:
        self.progress.step(f"timing round {round_index + 1}/{self.policy.round_range()[1]} {name} ({n_samples})")

    def _power(self, ready: list[ReadyCase]) -> None:
        """One interleaved energy measurement of the group's cases the power scope covers; rows updated."""
        covered = [item for item in ready if "power" in self.suite.metrics and self.suite.power.covers(item.case)]
        if not covered:
            return
        self.progress.step(f"power {len(covered)} cases of {covered[0].case.problem.resolution}")
        measure, reason = (optional("harness.measure.energy", "measure_energy_interleaved")
                           if self.measures.power is not None else (None, self.measures.power_reason))
        calls = {item.case.case_id: item.state.call for item in covered}
        try:
            with torch.no_grad():
                found = (measure(calls, self.device, self.policy, segment_s=self.suite.power_window_s / 2)
                         if measure else dict.fromkeys(calls, unavailable(reason)))
        except Exception as exc:  # the cases keep their timing; only power failed
            found = dict.fromkeys(calls, {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            release_memory(self.device)
        for item in covered:
            item.row["power"] = found[item.case.case_id]
        self.results.update_cases([item.row for item in covered])
        self.progress.advance(STAGE_WEIGHTS["power"] * len(covered), note="power done")

    def _traffic(self, item: ReadyCase, run: Callable[[], object]) -> dict:
        return self.measures.traffic.measure_traffic(item.case.to_dict(), self.out_dir / "traffic")

    PER_CASE_METRICS: ClassVar[dict] = {"traffic": _traffic}  # power: one measurement per group (`_power`)

    def _per_case_metrics(self, item: ReadyCase) -> None:
        """Traffic where the suite's scope covers the case, then a clock snapshot."""
        row, case = item.row, item.case
        for metric, measure in self.PER_CASE_METRICS.items():
            if metric not in self.suite.metrics or not getattr(self.suite, metric).covers(case):
                continue
            self.progress.step(f"{metric} {case.case_id}")
            if getattr(self.measures, metric) is None:
                row[metric] = unavailable(getattr(self.measures, f"{metric}_reason"))
            else:
                try:
                    with torch.no_grad():
                        row[metric] = measure(self, item, item.state.call)
                except Exception as exc:  # the case keeps its timing; only this metric failed
                    row[metric] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                    release_memory(self.device)
            self.progress.advance(STAGE_WEIGHTS[metric], note=f"{metric} done")
            self._record(row)
        if self.device.type == "cuda":
            snapshot, reason = optional("harness.measure.power", "snapshot")
            row.setdefault("clocks", {})["after"] = snapshot(self.device) if snapshot else unavailable(reason)

    def _run_e2e(self) -> None:
        self.progress.message("end-to-end Flux cases")
        if self.e2e is None:
            reason = "no end-to-end runner was given to this run (python -m harness run gives harness.apps.e2e's)"
            self.results.add_case(Row(kind="e2e", case="e2e", status="unavailable", reason=reason).to_dict())
            return
        try:
            self.e2e(dict(self.suite.e2e), self.results, self.device)
        except Exception as exc:
            self.results.add_case(Row(kind="e2e", case="e2e/error", **error_fields(exc, "e2e")).to_dict())


def run_suite(suite: Suite, out_dir: str | Path | None = None, methods: list[str] | None = None,
              device: torch.device | str | None = None, progress: bool = True, e2e: E2ERunner | None = None) -> Path:
    """Run ``suite`` (restricted to ``methods`` if given) and return its results directory:
    ``out_dir`` if given, else ``results/<run-id>``. Refuses a directory that already holds a run.
    ``e2e`` runs the suite's [e2e] table (the caller passes harness.apps.e2e's runner)."""
    if methods is not None:
        suite = suite.select(methods=methods)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but torch sees no CUDA device here")
    out_dir, run_id = claim_run_dir(out_dir, suite.name, RESULTS_ROOT)  # before any case runs: exclusive
    return SuiteRun(suite, out_dir, device, run_id, progress=progress, e2e=e2e).run()
