"""The process Nsight Compute profiles: rebuild one case, warm it up, then run one marked call.

``python -m harness.core.ncu_target --spec JSON`` with ``spec = {"method": <registry spec>, "problem":
Problem.to_dict()}``. The method is resolved through `baselines.registry`, prepared on CUDA and run on
seeded random inputs; warm-up calls (compilation, autotuning, lazy initialisation) come first, then one
call inside the NVTX range `MEASURED_RANGE`, which `harness.measure.traffic` tells ncu to profile exclusively.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

MEASURED_RANGE = "hilberta_bench_measured"


def problem_from_dict(data: dict):
    """A `Problem` from ``Problem.to_dict()`` output (derived keys such as ``seq_len`` are dropped)."""
    from baselines.problem import Problem

    names = {f.name for f in dataclasses.fields(Problem)}
    return Problem(**{key: value for key, value in data.items() if key in names})


def parse_spec(text: str) -> dict:
    spec = json.loads(text)
    if not isinstance(spec, dict) or set(spec) != {"method", "problem"}:
        raise ValueError(f"spec must be a JSON object with exactly the keys 'method' and 'problem', got {text!r}")
    return spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.core.ncu_target", description=__doc__)
    parser.add_argument("--spec", required=True, help='{"method": ..., "problem": ...} as JSON')
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled calls before the measured one")
    args = parser.parse_args(argv)
    spec = parse_spec(args.spec)

    import torch

    from baselines.registry import resolve

    problem = problem_from_dict(spec["problem"])
    prepared = resolve(spec["method"]).prepare(problem, "cuda")
    q, k, v = problem.random_qkv("cuda", seed=0)
    for _ in range(args.warmup):
        prepared.run(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push(MEASURED_RANGE)
    prepared.run(q, k, v)
    torch.cuda.synchronize()  # every kernel of the call is launched and done inside the range
    torch.cuda.nvtx.range_pop()


if __name__ == "__main__":
    main()
