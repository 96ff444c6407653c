"""The case lifecycle (harness.core.lifecycle): each stage's failure becomes the right status and reason."""

from __future__ import annotations

import pytest
import torch

from baselines.base import Availability, Method, PreparedAttention
from baselines.problem import Problem
from baselines.registry import MethodUnavailable
from harness.core.lifecycle import error_fields, incorrect_reason, make_ready
from harness.measure.correctness import CorrectnessPolicy

TINY = Problem(height=4, width=4, text_tokens=4, heads=1, head_dim=16, dtype="float32")
CPU = torch.device("cpu")


def exact(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def method(run=exact, build_error: BaseException | None = None, available: bool = True) -> Method:
    def build(problem, device):
        if build_error is not None:
            raise build_error
        return PreparedAttention(method="m", problem=problem, backend="fake", run=run, image_order=None,
                                 mask_rows=None, allowed_pairs=problem.seq_len ** 2,
                                 computed_pairs=problem.seq_len ** 2, setup_ms={"layout": 0.5})
    return Method(name="m", label="m", family="dense", build=build,
                  check_availability=lambda device: Availability(available, "" if available else "no GPU here"))


class Rejected(RuntimeError):
    """Stands for Triton's OutOfResources: the config does not fit."""


def first_call_fails(error):
    def run(q, k, v):
        raise error
    return run


def wrong(q, k, v):
    return v


@pytest.mark.parametrize("subject, status, stage_in_reason", [
    (method(), "ok", None),
    (method(available=False), "unavailable", "no GPU here"),
    (method(build_error=MethodUnavailable("refuses head_dim 16")), "unavailable", "refuses head_dim 16"),
    (method(build_error=RuntimeError("kaboom")), "failed", "prepare: RuntimeError: kaboom"),
    (method(run=first_call_fails(RuntimeError("bad launch"))), "failed", "first call: RuntimeError: bad launch"),
    (method(run=first_call_fails(torch.OutOfMemoryError("CUDA out of memory"))), "skipped", "first call: out of memory"),
    (method(run=first_call_fails(Rejected("shared memory"))), "skipped", "does not compile or fit: Rejected"),
    (method(run=wrong), "incorrect", "relative error"),
])
def test_each_stage_fails_into_its_status_and_reason(subject, status, stage_in_reason):
    state = make_ready(subject, TINY, CPU, CorrectnessPolicy(), rejections=(Rejected,))
    assert state.fields["status"] == status
    assert state.ready == (status == "ok")
    assert state.checked == (status in ("ok", "incorrect"))
    if stage_in_reason is None:
        assert state.fields["reason"] is None
        assert {"layout", "prepare", "first_call"} <= set(state.fields["setup_ms"])
        assert state.fields["setup_ms"]["layout"] == 0.5  # the method's own layout time wins
        assert state.fields["correctness"]["passed"] and state.fields["density"]["token"] == 1.0
        assert state.call().shape == TINY.shape()
    else:
        assert stage_in_reason in state.fields["reason"]


def test_the_incorrect_reason_has_one_wording():
    check = {"rel_err": 0.5, "tol": 0.01, "rows_checked": 32}
    assert incorrect_reason(check) == "relative error 0.5 > tolerance 0.01 on 32 rows"
    state = make_ready(method(run=wrong), TINY, CPU, CorrectnessPolicy())
    assert state.fields["reason"] == incorrect_reason(state.fields["correctness"])


def test_a_wrapped_cause_decides_the_status():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
        except torch.OutOfMemoryError as oom:
            raise RuntimeError("timing failed") from oom
    except RuntimeError as exc:
        fields = error_fields(exc, "timing")
    assert fields == {"status": "skipped", "reason": "timing: out of memory (CUDA out of memory. Tried to allocate 1 TiB)"}


def test_prepare_without_a_method_and_no_first_call():
    state = make_ready(None, TINY, CPU, CorrectnessPolicy(), prepare=lambda: method().prepare(TINY, CPU),
                       first_call=False, seed=0)
    assert state.ready and "first_call" not in state.fields["setup_ms"]


@pytest.mark.parametrize("device", ["cpu", CPU])
def test_a_device_given_by_name_works_like_a_device(device):
    assert make_ready(method(), TINY, device, CorrectnessPolicy()).ready
