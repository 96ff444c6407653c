"""The process Nsight Compute profiles: make one case ready, warm it up, then run one marked call.

``python -m harness.core.ncu_target --spec JSON`` with ``spec = {"method": <registry spec>, "problem":
Problem.to_dict()}``. The case goes through the same lifecycle as in the runner (`harness.core.lifecycle`:
available, prepared, first call, checked) on CUDA; warm-up calls (autotuning, lazy initialisation) come
next, then one call inside the NVTX range `harness.measure.traffic.MEASURED_RANGE`, which ncu profiles
exclusively. A case that is not ready exits with status 1 and its reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from harness.core.cases import CaseSpec, problem_from_dict  # noqa: F401  (problem_from_dict: for tests)
from harness.core.lifecycle import make_ready
from harness.measure.correctness import CorrectnessPolicy
from harness.measure.traffic import MEASURED_RANGE


def parse_spec(text: str) -> dict:
    spec = json.loads(text)
    if not isinstance(spec, dict) or set(spec) != {"method", "problem"}:
        raise ValueError(f"spec must be a JSON object with exactly the keys 'method' and 'problem', got {text!r}")
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.core.ncu_target", description=__doc__)
    parser.add_argument("--spec", required=True, help='{"method": ..., "problem": ...} as JSON')
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled calls before the measured one")
    args = parser.parse_args(argv)
    case = CaseSpec.from_dict(parse_spec(args.spec))
    device = torch.device("cuda")
    inputs = case.problem.random_qkv(device, seed=0)
    state = make_ready(case.method, case.problem, device, CorrectnessPolicy(), inputs)
    if not state.checked:
        print(f"ncu_target: {case.case_id} is not ready: {state.fields['status']}: {state.fields['reason']}",
              file=sys.stderr)
        return 1
    for _ in range(args.warmup):
        state.call()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push(MEASURED_RANGE)
    state.call()
    torch.cuda.synchronize()  # every kernel of the call is launched and done inside the range
    torch.cuda.nvtx.range_pop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
