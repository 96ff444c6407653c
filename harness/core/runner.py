"""Run a suite: plan the cases, measure them problem by problem, and write the results directory.

For each problem (one resolution) every case is first made ready on its own: availability, prepare
(layout and mask build, ``setup_ms.layout``), the first call (compilation, ``setup_ms.first_call``), the
correctness check against the exact reference, the permutation cost and locality. Then all ready cases of
the problem are timed *together*, interleaved in rounds (`harness.measure.timing.time_interleaved`) while NVML
samples clocks, and each gets its power, memory traffic and a clock snapshot where the suite asks.
Anything that goes wrong in one case (an exception, out of memory) becomes that case's row with a reason;
the run goes on. ``results.json`` is rewritten after every case (`harness.core.results.ResultsFile`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import torch

from baselines.base import PreparedAttention
from harness.measure import derived, stats, timing
from harness.measure.correctness import check_correctness
from harness.measure.power import unavailable
from harness.core.progress import Progress
from harness.core.results import PYTEST_BENCHMARK_NAME, RESULTS_NAME, ResultsFile, export_pytest_benchmark, utc_now
from harness.core.suite import SUITES_DIR, CaseSpec, Suite

RESULTS_ROOT = Path("results")
OOM_ERRORS = (torch.OutOfMemoryError,)
# The permutation gather is small next to attention: a short budget of its own.
PERMUTE_TIMING = {"warmup_ms": 10.0, "min_samples": 5, "max_samples": 50, "budget_ms": 100.0, "rounds": 1}
# Progress weight of each stage of a case (how long it takes, roughly, relative to preparing one).
STAGE_WEIGHTS = {"prepare": 1, "timing": 1, "power": 1, "traffic": 3}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_run_id(suite_name: str, now: datetime | None = None) -> str:
    """``20261127-101500-bench-2048``: UTC time of the start, then the suite."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{suite_name}"


def optional(module: str, attr: str) -> tuple[Callable | None, str | None]:
    """``(function, None)``, or ``(None, reason)`` when the module is missing or fails to import."""
    try:
        return getattr(importlib.import_module(module), attr), None
    except Exception as exc:  # a missing or broken optional piece disables one measurement, not the run
        return None, f"{module}.{attr} is not available: {type(exc).__name__}: {exc}"


def error_row_fields(exc: BaseException, stage: str) -> dict:
    """status and reason for a case that raised: out of memory is 'skipped', a refusal 'unavailable'."""
    from baselines.registry import MethodUnavailable

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, OOM_ERRORS):
        return {"status": "skipped", "reason": f"{stage}: out of memory ({str(cause).splitlines()[0]})"}
    if isinstance(cause, MethodUnavailable):
        return {"status": "unavailable", "reason": str(cause)}
    tail = traceback.format_exception(type(cause), cause, cause.__traceback__)[-3:]
    return {"status": "failed", "reason": f"{stage}: {type(cause).__name__}: {cause}",
            "extra": {"traceback": "".join(tail)}}


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def base_row(case: CaseSpec) -> dict:
    method = case.method
    return {"kind": "kernel", "case": case.case_id, "method": method.name, "label": method.label,
            "family": method.family, "dense_reference": method.dense_reference, "params": dict(method.params),
            "spec": dict(case.spec), "group": case.group, "backend": None, "problem": case.problem.to_dict(),
            "status": "ok", "reason": None}


@dataclass
class ReadyCase:
    """A case that prepared, ran once and was checked: what the timing and the metrics need."""

    case: CaseSpec
    prepared: PreparedAttention
    row: dict


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

    def __init__(self, suite: Suite, out_dir: Path, device: torch.device, run_id: str, progress: bool = True):
        self.suite, self.out_dir, self.device = suite, out_dir, device
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
        try:
            inputs = problem.random_qkv(self.device, seed=0)  # shared by every method's timing
        except OOM_ERRORS as exc:
            inputs, reason = None, f"inputs: out of memory ({str(exc).splitlines()[0]})"
        for case in cases:
            self.progress.step(f"prepare {case.case_id}")
            row = base_row(case)
            if inputs is None:
                row.update(status="skipped", reason=reason)
            else:
                ready_case = self._prepare(case, row, inputs)
                if ready_case is not None:
                    ready.append(ready_case)
            if row["status"] not in ("ok", "incorrect"):
                self._finish(row, self._weight(case))
            else:
                self.progress.advance(STAGE_WEIGHTS["prepare"], note="ready")
        if ready and "timing" in self.suite.metrics:
            self._time(ready, inputs)
        for item in ready:
            self._per_case_metrics(item, inputs)
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
        """Prepare, first call, correctness, permutation cost, locality; fills ``row``; None if it cannot run."""
        avail = case.method.availability(self.device)
        if not avail:
            row.update(status="unavailable", reason=avail.reason)
            return None
        stage = "prepare"
        try:
            with torch.no_grad():
                timing.synchronize(self.device)
                start = time.perf_counter()
                prepared = case.method.prepare(case.problem, self.device)
                timing.synchronize(self.device)
                layout_ms = (time.perf_counter() - start) * 1e3
                row.update(backend=prepared.backend, **derived.static_metrics(prepared))
                row["extra"] = dict(prepared.extra)
                stage = "first call"
                first_ms = timing.time_once_ms(lambda: prepared.run(*inputs), self.device)
                # "layout" is the method's own layout time when it reports one, else the whole prepare
                row["setup_ms"] = {"layout": layout_ms, **prepared.setup_ms, "prepare": layout_ms,
                                   "first_call": first_ms}
                stage = "correctness"
                row["correctness"] = check_correctness(prepared, self.suite.correctness, self.device)
                if prepared.image_order is not None:
                    stage = "permutation"
                    row["setup_ms"]["permute"] = self._permute_ms_of(prepared)
        except Exception as exc:
            row.update(error_row_fields(exc, stage))
            release_memory(self.device)
            return None
        if not row["correctness"]["passed"]:
            check = row["correctness"]
            row.update(status="incorrect", reason=f"relative error {check['rel_err']:.3g} > tolerance "
                                                  f"{check['tol']:.3g} on {check['rows_checked']} rows")
        if "locality" in self.suite.metrics:
            row["locality"] = self._locality(prepared)
        return ReadyCase(case, prepared, row)

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

    def _time(self, ready: list[ReadyCase], inputs) -> None:
        """Time all ready cases interleaved; a case that raises is marked and the rest timed again."""
        pending = {item.case.case_id: item for item in ready}
        sampler_class, reason = optional("harness.measure.power", "PowerSampler")
        while pending:
            fns = {cid: (lambda p=item.prepared: p.run(*inputs)) for cid, item in pending.items()}
            self.progress.step(f"timing {len(fns)} cases of {ready[0].case.problem.resolution}")
            sampler = sampler_class(self.device) if sampler_class else None  # clocks while samples are taken
            try:
                with torch.no_grad(), sampler or contextlib.nullcontext():
                    result = timing.time_interleaved(fns, self.policy, self.device, self._timing_progress)
            except timing.TimedFnError as exc:
                item = pending.pop(exc.name)
                item.row.update(error_row_fields(exc, "timing"))
                ready.remove(item)
                self._finish(item.row, self._weight(item.case) - STAGE_WEIGHTS["prepare"])
                release_memory(self.device)
                continue
            during = sampler.summary() if sampler else unavailable(reason)
            for cid, item in pending.items():
                item.row.update(samples_ms=result[cid], **stats.summarize(result[cid]))
                item.row["extra"]["timing"] = result.details[cid]
                item.row["clocks"] = {"during_timing": during}
            self.progress.advance(STAGE_WEIGHTS["timing"] * len(pending), note="timed")
            return

    def _timing_progress(self, name: str, round_index: int, n_samples: int) -> None:
        self.progress.step(f"timing round {round_index + 1}/{self.policy.rounds} {name} ({n_samples} samples)")

    def _power(self, item: ReadyCase, run: Callable[[], object]) -> dict:
        return self.measures.power.measure_energy(run, self.device, self.suite.power_window_s)

    def _traffic(self, item: ReadyCase, run: Callable[[], object]) -> dict:
        return self.measures.traffic.measure_traffic(item.case.to_dict(), self.out_dir / "traffic")

    PER_CASE_METRICS: ClassVar[dict] = {"power": _power, "traffic": _traffic}

    def _per_case_metrics(self, item: ReadyCase, inputs) -> None:
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
                        row[metric] = measure(self, item, lambda: item.prepared.run(*inputs))
                except Exception as exc:  # the case keeps its timing; only this metric failed
                    row[metric] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                    release_memory(self.device)
            self.progress.advance(STAGE_WEIGHTS[metric], note=f"{metric} done")
        if self.device.type == "cuda":
            snapshot, reason = optional("harness.measure.power", "snapshot")
            row.setdefault("clocks", {})["after"] = snapshot(self.device) if snapshot else unavailable(reason)

    def _run_e2e(self) -> None:
        self.progress.message("end-to-end Flux cases")
        run_cases, reason = optional("harness.apps.e2e", "run_e2e_cases")
        if run_cases is None:
            self.results.add_case({"kind": "e2e", "case": "e2e", "status": "unavailable", "reason": reason})
            return
        try:
            run_cases(dict(self.suite.e2e), self.results, self.device)
        except Exception as exc:
            fields = error_row_fields(exc, "e2e")
            self.results.add_case({"kind": "e2e", "case": "e2e/error", **fields})


def run_suite(suite: Suite, out_dir: str | Path | None = None, methods: list[str] | None = None,
              device: torch.device | str | None = None, progress: bool = True) -> Path:
    """Run ``suite`` (restricted to ``methods`` if given) and return its results directory:
    ``out_dir`` if given, else ``results/<run-id>``. Refuses a directory that already holds a run."""
    if methods is not None:
        suite = suite.select(methods=methods)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but torch sees no CUDA device here")
    run_id = make_run_id(suite.name)
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_ROOT / run_id
    if (out_dir / RESULTS_NAME).exists():
        raise FileExistsError(f"{out_dir} already holds a run ({RESULTS_NAME}); choose another --out")
    return SuiteRun(suite, out_dir, device, run_id, progress=progress).run()


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
    print(f"\nresults: {out_dir / RESULTS_NAME}", file=stream)
