"""The processes of a spread run: one worker per card, handed its work, waited for, then merged.

The parent (`run_spread`) finds or starts the workers and hands each its payload at once
(`harness.core.spread.pool`: the card count and the worker's position, before the parent has imported
torch), then checks the input and plans while they run; a refusal stops them and removes what the run
claimed. Each worker (`serve_run`: a fresh process's `main`, or a warm worker's run) loads the selection,
warms up its engines (`warm_up`), makes the same deterministic plan (`harness.core.spread.plan`) and runs its
own units: an ordinary `harness.core.runner.run_suite` of ``Suite.select(parts=...)`` into ``<out>/gpu<index>/``
(its own env.json, traffic reports and log). NVML finds its card by UUID, so power stays per card. When all
have ended, `merge_workers` joins their results and the parent writes ONE results.json atomically, with
env.json and the pytest-benchmark export.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import harness
from harness.core.cases import Suite
from harness.core.results import ENV_NAME, PYTEST_BENCHMARK_NAME, RESULTS_NAME, export_pytest_benchmark, write_json_atomic
from harness.core.spread.merge import merge_workers
from harness.core.spread.plan import E2E_GROUP, Plan, spread_plan
from harness.core.spread.pool import Launcher, Pool, Selection, card_indices, start_workers
from harness.core.wall import WallClock


def worker_units(suite: Suite, payload: dict) -> tuple[Plan, list[str]]:
    """The plan of the run (`spread_plan`: deterministic for the suite and the card count, so the parent's own
    is the same) and the units of this worker's position in it."""
    plan = spread_plan(suite, payload["cards"], payload["first_calls"])
    return plan, plan.assignment[payload["position"]]


def worker_suite(suite: Suite, plan: Plan, units: list[str]) -> Suite:
    """The part of ``suite`` a worker runs: its (resolution, layer) parts, and the [e2e] table only if it is its own."""
    mine = suite.select(parts=plan.parts(unit for unit in units if unit != E2E_GROUP))
    return mine if E2E_GROUP in units else replace(mine, metrics=mine.metrics - {"e2e"})


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


def warm_up_line(loaded_s: float, steps: dict[str, float], total_s: float, warm: bool = False) -> str:
    """The worker log's line on where its warm-up went (steps under 0.05 s are left out); ``warm``: a warm
    worker's run, counted from its request."""
    parts = [f"{name} {sec:.1f} s" for name, sec in steps.items() if sec >= 0.05]
    since, loading = ("the request", "the suite") if warm else ("start", "interpreter, imports and the suite")
    return (f"warmed up {total_s:.1f} s after {since} ({loading} {loaded_s:.1f} s"
            + (f"; {', '.join(parts)}" if parts else "") + "); waiting for the payload")


def run_worker(selection: Selection, suite: Suite, payload: dict) -> Path | None:
    """Inside a worker: run this card's units of the loaded suite with the ordinary runner (None: the plan
    gave this card nothing)."""
    from harness.core.runner import optional, run_suite

    plan, units = worker_units(suite, payload)
    print(f"units: {', '.join(units) or 'none'}", flush=True)
    if not units:
        return None
    e2e = None
    if E2E_GROUP in units and selection.e2e_runner:
        module, _, attr = selection.e2e_runner.partition(":")
        e2e, _ = optional(module, attr)
    return run_suite(worker_suite(suite, plan, units), payload["out"], device=payload["device"], progress=False,
                     e2e=e2e)


def check_cards(indices: Sequence[int], device: str) -> None:
    """A one-line ValueError when the host has fewer CUDA devices than ``indices`` asks for."""
    if not device.startswith("cuda"):
        return
    import torch

    if max(indices, default=0) >= torch.cuda.device_count():
        raise ValueError(f"--gpus {len(indices)}: this host has {torch.cuda.device_count()} CUDA device(s)")


def _unclaim(out_dir: Path, existed: bool) -> None:
    """Remove what a refused run put in its claimed directory (all of it, when the run created the directory)."""
    if not existed:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for path in out_dir.iterdir():  # a directory given with --out that existed (empty of runs) stays
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_spread(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
               device: str = "cuda:0", launcher: Launcher | None = None, echo: Callable[[str], None] = print,
               pool: Pool | None = None, check: Callable[[], Suite] | None = None) -> Path:
    """Run ``selection`` over ``gpus`` (a count, or the card indices) and return the merged results directory.

    ``pool``: the workers `start_workers` started already for these cards, maybe handed out already
    (`Pool.hand_out`: the command line does both before it imports torch); else both happen here.
    ``check``: the parent's check of the input, returning the loaded suite (default: the selection loads;
    without a ``pool`` the cards are checked before any worker starts); it runs while the workers do, and a
    refusal stops them and removes what the run put in its directory. ``device`` is the torch device inside
    each worker (``cuda:0``: its one visible card; ``cpu`` in tests); ``launcher`` turns a worker into a
    command (default: `harness.core.spread.pool.worker_command`).
    """
    wall = WallClock()
    indices = card_indices(gpus)
    if pool is None:
        check_cards(indices, device)
        pool = start_workers(selection, indices, out_dir, device, launcher)
    try:
        out_dir, run_id = pool.hand_out(selection, out_dir, device)
    except BaseException:
        pool.close()
        raise
    try:
        with wall.stage("check"):  # the workers run meanwhile: they have their payloads
            suite = check() if check is not None else selection.load()
    except BaseException:
        pool.terminate()
        _unclaim(out_dir, pool.dir_existed)
        raise
    plan = spread_plan(suite, len(indices), pool.first_calls)
    interrupted = False
    try:
        for worker, units, load in zip(pool.workers, plan.assignment, plan.loads):
            worker.units = units  # as the worker's own plan has it (the same rule on the same suite)
            if units:
                echo(f"gpu{worker.index}: {', '.join(units)} (estimated {load:.0f} s) -> {worker.directory}")
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
    if interrupted:  # units never run have no rows at all: the run is not whole
        merged["complete"] = False
    write_json_atomic(out_dir / RESULTS_NAME, merged)
    write_json_atomic(out_dir / ENV_NAME, merged["env"])
    export_pytest_benchmark(merged, out_dir / PYTEST_BENCHMARK_NAME)
    if interrupted:
        raise KeyboardInterrupt
    return out_dir


def serve_run(selection: Selection, device: str, read_line: Callable[[], str], warm: bool = False) -> int:
    """One worker's run, cold or warm: load the selection, warm up, read the payload's path (``read_line``;
    an empty line: no work), run. Counts from `harness.PROCESS_START_S`: a cold worker's start, or when a
    ``warm`` worker was asked. Returns the exit code."""
    started = harness.PROCESS_START_S
    suite = selection.load()
    loaded = time.time()
    steps = warm_up(suite, device)
    ready = time.time()
    print(warm_up_line(loaded - started, steps, ready - started, warm), flush=True)
    line = read_line().strip()
    print(f"payload after {time.time() - ready:.1f} s of waiting", flush=True)
    if not line:
        print("released without work")
        return 0
    run_worker(selection, suite, json.loads(Path(line).read_text()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """A cold worker: `serve_run` once, its payload's path from stdin."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m harness.core.spread SELECTION_JSON DEVICE (started by `python -m harness run "
              "--gpus N`; the payload's path comes on stdin)", file=sys.stderr)
        return 2
    return serve_run(Selection(**json.loads(argv[0])), argv[1], sys.stdin.readline)
