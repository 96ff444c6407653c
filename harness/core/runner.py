"""Run a suite: plan the cases, measure them problem by problem, and write the results directory.

For each problem (one resolution) every case is first made ready on its own through the case lifecycle
(`harness.core.lifecycle`: availability, prepare with ``setup_ms.layout``, the first call with
``setup_ms.first_call``, the correctness check against the exact reference), then its permutation cost and
locality. Then all ready cases of the problem are timed *together* (`time_group`, the one place the runner
times: `harness.measure.timing.time_interleaved`) while NVML samples clocks, and each gets its power, memory traffic and a clock snapshot where the suite asks.
Anything that goes wrong in one case (an exception, out of memory) becomes that case's row with a reason;
the run goes on. ``results.json`` is rewritten after every case (`harness.core.results.ResultsFile`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import torch

from baselines.base import PreparedAttention
from harness.core import memory
from harness.core.cases import CaseSpec, Suite
from harness.core.lifecycle import OOM_ERRORS, CaseState, case_row, error_fields, make_ready, release_memory
from harness.core.paths import RESULTS_ROOT, claim_run_dir
from harness.core.progress import Progress
from harness.core.results import PYTEST_BENCHMARK_NAME, RESULTS_NAME, ResultsFile, export_pytest_benchmark, utc_now
from harness.core.schema import Row
from harness.core.suite import SUITES_DIR
from harness.measure import derived, stats, timing
from harness.measure.power import unavailable

# The permutation gather is small next to attention: a short budget of its own.
PERMUTE_TIMING = {"warmup_ms": 10.0, "min_samples": 5, "max_samples": 50, "budget_ms": 100.0, "rounds": 1}
# Progress weight of each stage of a case (how long it takes, roughly, relative to preparing one).
STAGE_WEIGHTS = {"prepare": 1, "timing": 1, "power": 1, "traffic": 3}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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

    def _weight(self, case: CaseSpec) -> int:
        weight = STAGE_WEIGHTS["prepare"] + STAGE_WEIGHTS["timing"] * ("timing" in self.suite.metrics)
        for metric in ("power", "traffic"):
            if metric in self.suite.metrics and getattr(self.suite, metric).covers(case):
                weight += STAGE_WEIGHTS[metric]
        return weight

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> Path:
        self.progress.message(f"{self.suite.name}: {len(self.cases)} cases on {self.device} -> {self.out_dir}")
        self.results.write_env(self._environment())
        complete = False
        try:
            for _, group in groupby(self.cases, key=lambda case: case.problem.resolution):
                self._run_problem(list(group))
            if "e2e" in self.suite.metrics:
                self._run_e2e()
            complete = True
        finally:  # also on Ctrl-C: the file then says the run stopped early, and the export matches it
            self.progress.close()
            self.results.set(finished=utc_now(), complete=complete)
            export_pytest_benchmark(self.results.data, self.out_dir / PYTEST_BENCHMARK_NAME)
        return self.out_dir

    def _environment(self) -> dict:
        fingerprint, reason = optional("harness.measure.envinfo", "fingerprint")
        if fingerprint is None:
            return unavailable(reason)
        try:
            return fingerprint(self.device)
        except Exception as exc:
            return unavailable(f"fingerprint failed: {type(exc).__name__}: {exc}")

    def _run_problem(self, cases: list[CaseSpec]) -> None:
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
        if ready and "timing" in self.suite.metrics:
            self._time(ready)
        for item in ready:
            self._per_case_metrics(item)
            self._finish(item.row, 0)
        rows = [row for row in self.results.cases if row.get("kind") == "kernel"
                and derived.problem_key(row) == derived.problem_key({"problem": problem.to_dict()})]
        self.results.update_cases(derived.add_derived(rows))
        del ready, inputs
        release_memory(self.device)

    def _finish(self, row: dict, weight: int) -> None:
        self.results.add_case(row)
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
        during = sampler.summary() if sampler else unavailable(reason)
        for item in list(ready):
            cid = item.case.case_id
            if cid in failures:
                item.row.update(error_fields(failures[cid], "timing"))
                ready.remove(item)
                self._finish(item.row, self._weight(item.case) - STAGE_WEIGHTS["prepare"])
                continue
            item.row.update(samples_ms=result[cid], **stats.summarize(result[cid]))
            item.row["extra"]["timing"] = result.details[cid]
            item.row["clocks"] = {"during_timing": during}
        self.progress.advance(STAGE_WEIGHTS["timing"] * len(ready), note="timed")

    def _timing_progress(self, name: str, round_index: int, n_samples: int) -> None:
        self.progress.step(f"timing round {round_index + 1}/{self.policy.rounds} {name} ({n_samples} samples)")

    def _power(self, item: ReadyCase, run: Callable[[], object]) -> dict:
        return self.measures.power.measure_energy(run, self.device, self.suite.power_window_s)

    def _traffic(self, item: ReadyCase, run: Callable[[], object]) -> dict:
        return self.measures.traffic.measure_traffic(item.case.to_dict(), self.out_dir / "traffic")

    PER_CASE_METRICS: ClassVar[dict] = {"power": _power, "traffic": _traffic}

    def _per_case_metrics(self, item: ReadyCase) -> None:
        """Power and traffic where the suite's scope covers the case, then a clock snapshot."""
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


def console_table(results: dict) -> str:
    """The final table: resolution, method, status, median, CI, speedup vs the fastest dense, density."""
    header = ("resolution", "method", "status", "median ms", "95% CI ms", "vs fastest dense", "density")
    lines = [header]
    for row in results["cases"]:
        problem = row.get("problem") or {}
        derived_row = row.get("derived") or {}
        fastest = derived_row.get("fastest_dense")
        speedup = (derived_row.get("speedup") or {}).get(fastest)
        ci = row.get("ci95_ms")
        layer = f" L{problem['layer']}" if problem.get("layer") else ""
        layer += f" [{row['kind']}]" if row.get("kind", "kernel") != "kernel" else ""
        density = (row.get("density") or {}).get("token")
        lines.append((
            str(problem.get("resolution", "")), f"{row.get('method') or row['case']}{layer}", row["status"],
            f"{row['median_ms']:.4g}" if row.get("median_ms") else "",
            f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and None not in ci else "",
            f"{speedup:.2f}x ({fastest})" if speedup else "",
            f"{density:.1%}" if density is not None else "",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    reasons = [f"  {row['case']}: {row['status']}: {row['reason']}" for row in results["cases"]
               if row.get("reason")]
    return "\n".join(out + (["", "reasons:", *reasons] if reasons else []))


def exit_status(results: dict) -> int:
    """1 when a case was incorrect or failed, else 0 (unavailable and skipped cases are not failures)."""
    return int(any(row.get("status") in ("incorrect", "failed") for row in results["cases"]))


def print_summary(results: dict, out_dir: Path, stream=None) -> None:
    stream = stream or sys.stdout
    print(console_table(results), file=stream)
    if results.get("complete") is False:
        print(f"\nINCOMPLETE: the run stopped before its end (complete: false); {len(results['cases'])} cases "
              "recorded, the rest never ran", file=stream)
    print(f"\nresults: {out_dir / RESULTS_NAME}", file=stream)
