"""One case lifecycle: available -> prepared -> first call -> checked -> ready for timing.

Every tool that measures a method (the runner, tune, the A/B worker, ncu's target process, e2e) makes its
case ready here, so the stages, their timings, the error rows and the "incorrect" reason are written once:

    state = make_ready(method, problem, device, policy, inputs)   # never raises for a case's own failure
    state.fields        # row fields so far: status, reason, backend, density/flops/bytes, setup_ms, correctness
    state.ready         # status "ok": correct, and a call to time
    state.call          # zero-argument call on ``inputs`` (None when the case cannot run)

A failure at any stage becomes ``status``/``reason`` fields (`error_fields`): out of memory is "skipped",
a method's refusal "unavailable", anything else "failed" with the stage and a traceback tail.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baselines.base import PreparedAttention
from baselines.registry import MethodUnavailable
from harness.core.cases import CaseSpec
from harness.core.schema import Row
from harness.measure import derived, timing
from harness.measure.correctness import CorrectnessPolicy, check_correctness

OOM_ERRORS = (torch.OutOfMemoryError,)


def case_row(case: CaseSpec) -> dict:
    """The row of a case before it runs: who it is and on what problem (kind "kernel")."""
    method = case.method
    return Row(kind="kernel", case=case.case_id, method=method.name, label=method.label,
               family=case.spec.get("method"), category=method.family, dense_reference=method.dense_reference,
               params=dict(method.params), spec=dict(case.spec), group=case.group,
               problem=case.problem.to_dict()).to_dict()


def default_device() -> torch.device:
    """Where cases run unless told: CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_memory(device: torch.device | str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def error_fields(exc: BaseException, stage: str) -> dict:
    """status and reason for a case that raised: out of memory is 'skipped', a refusal 'unavailable'."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, OOM_ERRORS):
        return {"status": "skipped", "reason": f"{stage}: out of memory ({str(cause).splitlines()[0]})"}
    if isinstance(cause, MethodUnavailable):
        return {"status": "unavailable", "reason": str(cause)}
    tail = traceback.format_exception(type(cause), cause, cause.__traceback__)[-3:]
    return {"status": "failed", "reason": f"{stage}: {type(cause).__name__}: {cause}",
            "extra": {"traceback": "".join(tail)}}


def availability_fields(method, device: torch.device | str) -> dict | None:
    """None when ``method`` can run on ``device``, else its "unavailable" status and reason."""
    avail = method.availability(device)
    return None if avail else {"status": "unavailable", "reason": avail.reason}


def incorrect_reason(check: dict) -> str:
    """The one wording of a failed correctness check."""
    return (f"relative error {check['rel_err']:.3g} > tolerance {check['tol']:.3g} "
            f"on {check['rows_checked']} rows")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@dataclass
class CaseState:
    """Where one case got to: its row fields, and what is needed to time it."""

    fields: dict = field(default_factory=lambda: {"status": "ok", "reason": None})
    prepared: PreparedAttention | None = None
    call: Callable[[], object] | None = None
    stage: str = "availability"  # the last stage reached

    @property
    def ready(self) -> bool:
        return self.fields["status"] == "ok" and self.call is not None

    @property
    def checked(self) -> bool:
        """Ran and was checked (correct or not): the runner still times incorrect cases, to show them."""
        return self.fields["status"] in ("ok", "incorrect") and self.call is not None


def make_ready(method, problem, device: torch.device | str, policy: CorrectnessPolicy, inputs=None, *,
               prepare: Callable[[], PreparedAttention] | None = None, seed: int | None = None,
               first_call: bool = True, rejections: tuple[type[BaseException], ...] = ()) -> CaseState:
    """Take one case through the lifecycle. ``method`` is a registry `Method` (its availability is asked
    first) or None with ``prepare`` given; ``inputs`` (q, k, v) are what the call runs on (drawn with seed 1
    when None). ``rejections`` are exceptions meaning "this configuration does not compile or fit here":
    they make the case "skipped" instead of "failed"."""
    state, device = CaseState(), torch.device(device)
    start = time.perf_counter()
    refused = None if method is None else availability_fields(method, device)
    availability_ms = (time.perf_counter() - start) * 1e3  # the first case of an engine pays its probe
    if refused is not None:
        state.fields.update(refused)
        return state
    try:
        with torch.no_grad():
            state.stage = "prepare"
            timing.synchronize(device)
            start = time.perf_counter()
            prepared = prepare() if prepare is not None else method.prepare(problem, device)
            timing.synchronize(device)
            prepare_ms = (time.perf_counter() - start) * 1e3
            state.prepared = prepared
            state.fields.update(backend=prepared.backend, **derived.static_metrics(prepared),
                                extra=dict(prepared.extra))
            # "layout" is the method's own layout time when it reports one, else the whole prepare
            state.fields["setup_ms"] = {"availability": availability_ms, "layout": prepare_ms, **prepared.setup_ms,
                                        "prepare": prepare_ms}
            q, k, v = inputs if inputs is not None else problem.random_qkv(device, seed=1)
            if first_call:
                state.stage = "first call"
                state.fields["setup_ms"]["first_call"] = timing.time_once_ms(lambda: prepared.run(q, k, v), device)
            state.stage = "correctness"
            start = time.perf_counter()
            check = check_correctness(prepared, policy, device, seed=seed)
            state.fields["setup_ms"]["check"] = (time.perf_counter() - start) * 1e3
    except Exception as exc:  # one case's failure is its row, never the end of the run
        rejected = isinstance(exc, rejections)
        state.fields.update({"status": "skipped", "reason": f"does not compile or fit: {first_line(exc)}"}
                            if rejected else error_fields(exc, state.stage))
        state.prepared = None
        release_memory(device)
        return state
    state.fields["correctness"] = check
    if not check["passed"]:
        state.fields.update(status="incorrect", reason=incorrect_reason(check))
    state.call = lambda: prepared.run(q, k, v)
    return state
