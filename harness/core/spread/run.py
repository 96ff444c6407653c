"""The processes of a spread run: one worker per card, started, waited for, then merged.

`run_spread` plans (`harness.core.spread.plan`), claims the results directory, writes one payload per card
and starts ``python -m harness.core.spread PAYLOAD`` with ``CUDA_VISIBLE_DEVICES=<index>`` (NVLink
multicast off). The payload names the worker's units as ``(resolution, layer)`` parts of the plan (and
whether it runs the [e2e] table); each worker (`run_worker`) is an ordinary `harness.core.runner.run_suite`
of ``Suite.select(parts=...)`` into ``<out>/gpu<index>/`` (its own env.json, traffic reports and log). NVML
finds its card by UUID, so power stays per card. When all have ended, `merge` writes ONE results.json
atomically, with env.json and the pytest-benchmark export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.core.cases import Suite
from harness.core.paths import RESULTS_ROOT, claim_run_dir
from harness.core.results import ENV_NAME, PYTEST_BENCHMARK_NAME, RESULTS_NAME, export_pytest_benchmark, write_json_atomic
from harness.core.spread.merge import Worker, merge
from harness.core.spread.plan import E2E_GROUP, Plan, spread_plan
from harness.core.wall import WallClock

# Kept off in every worker (KINDS.md): NVLink multicast is not lent on these machines.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


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


def worker_payload(selection: Selection, plan: Plan, units: list[str], directory: Path, device: str) -> dict:
    kernel_units = [unit for unit in units if unit != E2E_GROUP]
    return {"selection": selection.__dict__, "parts": [list(part) for part in plan.parts(kernel_units)],
            "e2e": E2E_GROUP in units, "out": str(directory), "device": device}


def worker_command(payload_path: Path) -> list[str]:
    return [sys.executable, "-m", "harness.core.spread", str(payload_path)]


def worker_suite(payload: dict) -> Suite:
    """The suite a worker runs: its (resolution, layer) parts, and the [e2e] table only if it is its own."""
    suite = Selection(**payload["selection"]).load().select(parts=[tuple(part) for part in payload["parts"]])
    return suite if payload["e2e"] else replace(suite, metrics=suite.metrics - {"e2e"})


def run_worker(payload: dict) -> Path:
    """Inside a worker: run the assigned parts of the suite with the ordinary runner."""
    from harness.core.runner import optional, run_suite

    selection = Selection(**payload["selection"])
    e2e = None
    if payload["e2e"] and selection.e2e_runner:
        module, _, attr = selection.e2e_runner.partition(":")
        e2e, _ = optional(module, attr)
    return run_suite(worker_suite(payload), payload["out"], device=payload["device"], progress=False, e2e=e2e)


Launcher = Callable[[Worker, Path], list[str]]


def run_spread(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
               device: str = "cuda:0", launcher: Launcher | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run ``selection`` over ``gpus`` (a count, or the card indices) and return the merged results directory.

    ``device`` is the torch device inside each worker (``cuda:0``: its one visible card; ``cpu`` in tests);
    ``launcher`` turns a worker and its payload file into a command (default: `worker_command`).
    """
    wall = WallClock()
    indices = list(range(gpus)) if isinstance(gpus, int) else list(gpus)
    if device.startswith("cuda"):
        import torch

        if max(indices, default=0) >= torch.cuda.device_count():
            raise ValueError(f"--gpus {len(indices)}: this host has {torch.cuda.device_count()} CUDA device(s)")
    suite = selection.load()
    plan = spread_plan(suite, len(indices))
    out_dir, run_id = claim_run_dir(out_dir, suite.name, RESULTS_ROOT)
    workers = [Worker(index, units, out_dir / f"gpu{index}") for index, units in zip(indices, plan.assignment)]
    launcher = launcher or (lambda worker, payload_path: worker_command(payload_path))
    for worker, load in zip(workers, plan.loads):
        if not worker.units:
            continue
        payload_path = out_dir / f"gpu{worker.index}.payload.json"
        write_json_atomic(payload_path, worker_payload(selection, plan, worker.units, worker.directory, device))
        env = {**os.environ, **NO_MULTICAST_ENV, "CUDA_VISIBLE_DEVICES": str(worker.index)}
        with open(worker.log, "w") as log:
            worker.process = subprocess.Popen(launcher(worker, payload_path), stdout=log, stderr=subprocess.STDOUT,
                                              env=env)
        echo(f"gpu{worker.index}: {', '.join(worker.units)} (estimated {load:.0f} s) -> {worker.directory}")
    if plan.unanchored():
        echo(f"timed without their resolution's dense anchor on the same card: {', '.join(plan.unanchored())}")
    interrupted = False
    try:
        with wall.stage("workers"):  # waiting for the last to exit
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
    with wall.stage("merge"):
        merged = merge(suite, workers, run_id, plan)
    merged["wall"] = wall.to_dict()
    write_json_atomic(out_dir / RESULTS_NAME, merged)
    write_json_atomic(out_dir / ENV_NAME, merged["env"])
    export_pytest_benchmark(merged, out_dir / PYTEST_BENCHMARK_NAME)
    if interrupted:
        raise KeyboardInterrupt
    return out_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.core.spread PAYLOAD.json (started by `python -m harness run --gpus N`)",
              file=sys.stderr)
        return 2
    run_worker(json.loads(Path(argv[0]).read_text()))
    return 0
