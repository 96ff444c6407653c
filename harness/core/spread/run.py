"""The processes of a spread run: one worker per card, started first, dispatched, waited for, then merged.

`run_spread` starts the workers (`harness.core.spread.pool`: each loads the selection and warms up its
engines, `warm_up`, while the parent goes on), plans (`harness.core.spread.plan`), claims the results
directory and hands each worker a payload naming its units as ``(resolution, layer)`` parts of the plan
(and whether it runs the [e2e] table). Each worker (`main`) then runs an ordinary
`harness.core.runner.run_suite` of ``Suite.select(parts=...)`` into ``<out>/gpu<index>/`` (its own env.json,
traffic reports and log). NVML finds its card by UUID, so power stays per card. When all have ended,
`merge_workers` joins their results and the parent writes ONE results.json atomically, with env.json and the
pytest-benchmark export.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from harness import PROCESS_START_S
from harness.core.cases import Suite
from harness.core.paths import RESULTS_ROOT, claim_run_dir
from harness.core.results import ENV_NAME, PYTEST_BENCHMARK_NAME, RESULTS_NAME, export_pytest_benchmark, write_json_atomic
from harness.core.spread.merge import merge_workers
from harness.core.spread.plan import E2E_GROUP, Plan, spread_plan
from harness.core.spread.pool import Launcher, Pool, Selection, card_indices, start_workers
from harness.core.wall import WallClock


def worker_payload(selection: Selection, plan: Plan, units: list[str], directory: Path, device: str) -> dict:
    kernel_units = [unit for unit in units if unit != E2E_GROUP]
    return {"selection": selection.__dict__, "parts": [list(part) for part in plan.parts(kernel_units)],
            "e2e": E2E_GROUP in units, "out": str(directory), "device": device}


def worker_suite(payload: dict, suite: Suite) -> Suite:
    """The part of ``suite`` a worker runs: its (resolution, layer) parts, and the [e2e] table only if it is its own."""
    mine = suite.select(parts=[tuple(part) for part in payload["parts"]])
    return mine if payload["e2e"] else replace(mine, metrics=mine.metrics - {"e2e"})


def warm_up(suite: Suite, device: str) -> dict[str, float]:
    """Ask every method of ``suite`` whether it runs on ``device``, before the worker has its payload: the
    answers are cached per device, so what they cost (CUDA's context, FA4's import and probe) is paid while
    the parent plans. A probe that raises is asked again by the case's lifecycle, which records it.
    Returns the seconds of each step: "CUDA context" and one per method (probes shared by a family count
    once, in the first method that asks)."""
    import torch

    target = torch.device(device)
    seconds = {}
    start = time.perf_counter()
    if target.type == "cuda":
        torch.zeros(1, device=target)  # the context, on its own line of the breakdown
        seconds["CUDA context"] = time.perf_counter() - start
    for method in {case.method.name: case.method for case in suite.cases()}.values():
        start = time.perf_counter()
        try:
            method.availability(target)
        except Exception:  # the lifecycle asks again and records the failure with the case
            pass
        seconds[method.name] = time.perf_counter() - start
    return seconds


def warm_up_line(loaded_s: float, steps: dict[str, float], total_s: float) -> str:
    """The worker log's line on where its warm-up went (steps under 0.05 s are left out)."""
    parts = [f"{name} {sec:.1f} s" for name, sec in steps.items() if sec >= 0.05]
    return (f"warmed up {total_s:.1f} s after start (interpreter, imports and the suite {loaded_s:.1f} s"
            + (f"; {', '.join(parts)}" if parts else "") + "); waiting for the payload")


def run_worker(payload: dict, suite: Suite) -> Path:
    """Inside a worker: run the assigned parts of the loaded suite with the ordinary runner."""
    from harness.core.runner import optional, run_suite

    selection = Selection(**payload["selection"])
    e2e = None
    if payload["e2e"] and selection.e2e_runner:
        module, _, attr = selection.e2e_runner.partition(":")
        e2e, _ = optional(module, attr)
    return run_suite(worker_suite(payload, suite), payload["out"], device=payload["device"], progress=False, e2e=e2e)


def check_cards(indices: Sequence[int], device: str) -> None:
    """A one-line ValueError when the host has fewer CUDA devices than ``indices`` asks for."""
    if not device.startswith("cuda"):
        return
    import torch

    if max(indices, default=0) >= torch.cuda.device_count():
        raise ValueError(f"--gpus {len(indices)}: this host has {torch.cuda.device_count()} CUDA device(s)")


def run_spread(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
               device: str = "cuda:0", launcher: Launcher | None = None, echo: Callable[[str], None] = print,
               pool: Pool | None = None) -> Path:
    """Run ``selection`` over ``gpus`` (a count, or the card indices) and return the merged results directory.

    ``pool``: the workers `start_workers` started already for these cards (the command line starts them
    before it imports torch); else they are started here. ``device`` is the torch device inside each
    worker (``cuda:0``: its one visible card; ``cpu`` in tests); ``launcher`` turns a worker into a
    command (default: `harness.core.spread.pool.worker_command`).
    """
    wall = WallClock()
    indices = card_indices(gpus)
    try:
        check_cards(indices, device)
        pool = pool or start_workers(selection, indices, out_dir, device, launcher)
        suite = selection.load()
        plan = spread_plan(suite, len(indices))
        out_dir, run_id = claim_run_dir(out_dir, suite.name, RESULTS_ROOT)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    pool.move_logs(out_dir)
    interrupted = False
    try:
        for worker, units, load in zip(pool.workers, plan.assignment, plan.loads):
            if not units:
                pool.release(worker)
                continue
            directory = out_dir / f"gpu{worker.index}"
            pool.dispatch(worker, units, directory, worker_payload(selection, plan, units, directory, device))
            echo(f"gpu{worker.index}: {', '.join(units)} (estimated {load:.0f} s) -> {directory}")
        if plan.unanchored():
            echo(f"timed without their resolution's dense anchor on the same card: {', '.join(plan.unanchored())}")
        with wall.stage("workers"):  # waiting for the last to exit
            pool.wait()
        for worker in pool.workers:
            echo(f"gpu{worker.index}: exited with code {worker.returncode}")
    except KeyboardInterrupt:  # stop the workers this run started, merge what they left, then stop too
        interrupted = True
        pool.terminate()
    with wall.stage("merge"):
        merged = merge_workers(suite, pool.workers, run_id, plan)
    merged["wall"] = wall.to_dict()
    if interrupted:  # units never handed out have no rows at all: the run is not whole
        merged["complete"] = False
    write_json_atomic(out_dir / RESULTS_NAME, merged)
    write_json_atomic(out_dir / ENV_NAME, merged["env"])
    export_pytest_benchmark(merged, out_dir / PYTEST_BENCHMARK_NAME)
    if interrupted:
        raise KeyboardInterrupt
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """A worker: load the selection, warm up, read the payload's path from stdin (an empty line: no work), run."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m harness.core.spread SELECTION_JSON DEVICE (started by `python -m harness run "
              "--gpus N`; the payload's path comes on stdin)", file=sys.stderr)
        return 2
    suite = Selection(**json.loads(argv[0])).load()
    loaded = time.time()
    steps = warm_up(suite, argv[1])
    warm = time.time()
    print(warm_up_line(loaded - PROCESS_START_S, steps, warm - PROCESS_START_S), flush=True)
    line = sys.stdin.readline().strip()
    print(f"payload after {time.time() - warm:.1f} s of waiting", flush=True)
    if not line:
        print("released without work")
        return 0
    run_worker(json.loads(Path(line).read_text()), suite)
    return 0
