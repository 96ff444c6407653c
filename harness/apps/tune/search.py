"""One problem's search: check every candidate, time the correct ones interleaved (coarse, refine), pick
the winner and time it against the default for the stored evidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from harness.core.lifecycle import make_ready
from harness.core.runner import time_group
from harness.core.schema import Row
from harness.measure import stats
from harness.measure.correctness import CorrectnessPolicy
from harness.measure.timing import TimingPolicy
from kernels import config as kconfig
from kernels.config import KernelConfig

from .settings import TunePlan, TuneProblem, TuneTarget


def config_rejections() -> tuple[type[BaseException], ...]:
    """What "this config does not compile, or does not fit on this GPU" looks like."""
    return CompilationError, OutOfResources, PTXASError, torch.OutOfMemoryError


@dataclass
class Candidate:
    config: KernelConfig
    is_default: bool
    row: dict
    call: Callable[[], object] | None = None  # set when the candidate compiled and passed the check


@dataclass
class ProblemOutcome:
    tune_problem: TuneProblem
    candidates: list[Candidate]
    best: Candidate | None = None
    default: Candidate | None = None
    evidence: dict | None = None
    note: str | None = None
    # per timing pass ("coarse", "refine", "final"): the case ids timed, in index order, each round's order
    # of those indices, and the schedule (`harness.measure.timing.TimingResult.orders`, `.schedule`)
    passes: dict[str, dict] = field(default_factory=dict)


def _candidate_row(target: TuneTarget, tp: TuneProblem, config: KernelConfig, is_default: bool) -> dict:
    return Row(kind="tune", case=f"{tp.label}/{config.name}", method=tp.method, label=config.name,
               kernel=target.name, params=config.to_dict(), backend=target.backend, problem=tp.problem.to_dict(),
               extra={"key": tp.key, "default": is_default, "chosen": False, "stage": None}).to_dict()


def _check_candidates(target: TuneTarget, tp: TuneProblem, configs: list[KernelConfig], device: torch.device,
                      deadline: float, inputs) -> list[Candidate]:
    """Make every config's method ready (`harness.core.lifecycle.make_ready`); only correct ones get a call."""
    default = tp.default or kconfig.DEFAULTS[target.name]  # timed against what runs without an entry
    policy = CorrectnessPolicy()
    rejections = config_rejections()
    candidates = []
    for config in [default, *(c for c in configs if c != default)]:
        candidate = Candidate(config, config == default, _candidate_row(target, tp, config, config == default))
        candidates.append(candidate)
        row = candidate.row
        if time.monotonic() > deadline:
            row.update(status="skipped", reason="tune budget spent before this config was tried")
            continue
        method = tp.candidate(config)
        state = make_ready(method, tp.problem, device, policy, inputs, seed=0, rejections=rejections)
        tune_extra = row["extra"]
        row.update(state.fields, family=tp.family, category=method.family)
        row["extra"] = {**state.fields.get("extra", {}), **tune_extra}
        candidate.call = state.call if state.ready else None
    return candidates


def _time(candidates: list[Candidate], policy: dict, device: torch.device, stage: str) -> dict[str, dict]:
    """Time the candidates interleaved (`harness.core.runner.time_group`); their rows get the samples of this
    pass. One that raises while being timed is marked failed and the rest are timed without it. Returns
    ``{stage: the pass's case ids and round orders}`` for `ProblemOutcome.passes` (empty if nothing ran)."""
    pending = {c.config.name: c for c in candidates if c.call is not None}
    if not pending:
        return {}
    samples, failures = time_group({name: c.call for name, c in pending.items()}, TimingPolicy(**policy), device)
    for name, c in pending.items():
        if name in failures:
            c.row.update(status="failed", reason=f"while timing: {failures[name]}")
            c.call = None
            continue
        c.row.update(samples_ms=samples[name], **stats.summarize(samples[name]))
        c.row["extra"]["stage"] = stage
    if samples is None:
        return {}
    return {stage: {"cases": [pending[name].row["case"] for name in samples], "orders": samples.orders,
                    "schedule": samples.schedule}}


def _median(c: Candidate) -> float:
    return c.row["median_ms"]


def _alive(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.call is not None]


def _evidence(best: Candidate, default: Candidate | None, n_timed: int) -> dict:
    """What `kernels.config.store` keeps next to the winner; the speedup is default / winner."""
    evidence = {"median_ms": best.row["median_ms"], "ci95_ms": best.row["ci95_ms"],
                "default_median_ms": default.row["median_ms"] if default else None,
                "speedup_vs_default": None, "candidates": n_timed}
    if default is best:
        evidence["speedup_vs_default"] = 1.0
    elif default is not None:
        ratio, lo, hi = stats.ratio_ci(best.row["samples_ms"], default.row["samples_ms"])
        evidence.update(speedup_vs_default=ratio, speedup_ci95=[lo, hi])
    return evidence


def tune_problem(target: TuneTarget, tp: TuneProblem, configs: list[KernelConfig], plan: TunePlan,
                 device: torch.device, deadline: float) -> ProblemOutcome:
    """Check, coarse-time, refine and pick for one problem; then time the winner against the default."""
    inputs = tp.problem.random_qkv(device, seed=0)
    candidates = _check_candidates(target, tp, configs, device, deadline, inputs)
    outcome = ProblemOutcome(tp, candidates, default=candidates[0])
    outcome.passes.update(_time(candidates, plan.coarse, device, "coarse"))
    timed = sorted(_alive(candidates), key=_median)
    top = timed[:plan.top_k] + [c for c in timed[plan.top_k:] if c.is_default]
    outcome.passes.update(_time(top, plan.refine, device, "refine"))
    if not _alive(top):
        tried = any(c.row["status"] != "skipped" or "budget" not in c.row["reason"] for c in candidates)
        outcome.note = ("no candidate compiled, passed the correctness check and ran" if tried
                        else "the tune budget was spent before this problem")
        return outcome
    best = min(_alive(top), key=_median)
    default = outcome.default if outcome.default.call is not None else None
    if default is not None and default is not best:
        outcome.passes.update(_time([best, default], plan.final, device, "final"))
        if default.call is not None and (best.call is None or _median(default) <= _median(best)):
            best = default  # the head-to-head overrules the refine pass: never store a slower config
    best.row["extra"]["chosen"] = True
    outcome.best, outcome.evidence = best, _evidence(best, default, len(timed))
    return outcome
