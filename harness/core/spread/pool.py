"""The worker processes of a spread run, started first: one per card, warming up while the parent plans.

What a process pays once (interpreter, torch, CUDA, the engines' imports and probes: 10-15 s on an H200,
FA4's alone 6-7 s) does not divide over cards, and the parent's own start-up (torch, the suite, the
checks: about 4 s) used to come on top of it. So ``python -m harness run --gpus N`` starts the workers
before it imports torch (`start_workers`): each loads the suite selection itself and asks its methods'
availability (which imports and probes the engines: `harness.core.spread.run.warm_up`), then waits on its
stdin for one line, the path of its payload. Meanwhile the parent validates, plans, claims the results
directory (`Pool.move_logs`) and hands each worker its payload (`Pool.dispatch`). An empty line releases a
worker without work (`Pool.release`): its card got no units, or the parent refused the input (`Pool.close`).

Until the results directory is claimed, a worker's output goes to ``.spread-<parent pid>-gpu<i>.log`` in the
directory that will hold it; the claim moves each log into the run directory (``gpu<i>.log``: the open
file follows the rename). Card indices are the host as the parent sees it: with ``CUDA_VISIBLE_DEVICES``
set, index i is its i-th entry. NVLink multicast stays off in every worker (KINDS.md).

Only the standard library is imported here: this runs before torch is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import PROCESS_START_S
from harness.core.paths import RESULTS_ROOT

if TYPE_CHECKING:  # the suite module imports torch
    from harness.core.cases import Suite

# Kept off in every worker (KINDS.md): NVLink multicast is not lent on these machines.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
RELEASE = "\n"  # the line that sends a worker home without work
POLL_S = 0.05  # how often the parent looks for exited workers (each one's exit time is recorded)


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


@dataclass
class Worker:
    index: int  # the card's index on this host, as the parent sees it
    log: Path  # its output: in the run directory once that is claimed
    process: subprocess.Popen | None = None
    units: list[str] = field(default_factory=list)  # unit keys of the plan (`harness.core.spread.plan`)
    directory: Path | None = None  # its results directory, once dispatched
    payload: Path | None = None
    returncode: int | None = None
    started_s: float | None = None  # when the parent started it and when it exited, seconds from the parent's start
    exited_s: float | None = None


def worker_command(selection: Selection, device: str) -> list[str]:
    """``python -m harness.core.spread SELECTION DEVICE``: a worker that warms up, then reads its payload."""
    return [sys.executable, "-m", "harness.core.spread", json.dumps(selection.__dict__), device]


def card_env(index: int) -> dict[str, str]:
    """The environment of the worker on card ``index``: that card alone visible, multicast off."""
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    card = visible[index] if index < len(visible) else str(index)
    return {**os.environ, **NO_MULTICAST_ENV, "CUDA_VISIBLE_DEVICES": card}


Launcher = Callable[[Worker], list[str]]


class Pool:
    """The started workers of one spread run (see the module docstring)."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self.claimed = False  # the logs are in the run directory: never removed from there

    def move_logs(self, run_dir: Path) -> None:
        """Move each worker's log into the claimed run directory (``gpu<i>.log``)."""
        for worker in self.workers:
            target = run_dir / f"gpu{worker.index}.log"
            try:
                os.replace(worker.log, target)  # the worker's open file follows the rename
            except OSError:  # another file system: the log stays where it is, and the card record names it
                continue
            worker.log = target
        self.claimed = True

    def _send(self, worker: Worker, line: str) -> None:
        try:
            worker.process.stdin.write(line)
            worker.process.stdin.close()
        except OSError:  # a broken pipe: it died while warming up: `wait` collects its exit code and log
            pass

    def dispatch(self, worker: Worker, units: list[str], directory: Path, payload: dict) -> None:
        """Write ``payload`` next to the worker's results directory and hand the worker its path."""
        worker.units, worker.directory = units, directory
        worker.payload = directory.with_suffix(".payload.json")
        tmp = worker.payload.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, worker.payload)
        self._send(worker, f"{worker.payload}\n")

    def release(self, worker: Worker) -> None:
        """Send a worker home without work."""
        self._send(worker, RELEASE)

    def wait(self) -> None:
        """Wait for every worker to exit, noting each one's exit code and when it exited."""
        running = [worker for worker in self.workers if worker.returncode is None]
        while running:
            for worker in running:
                worker.returncode = worker.process.poll()
                if worker.returncode is not None:
                    worker.exited_s = _since_start()
            running = [worker for worker in running if worker.returncode is None]
            time.sleep(POLL_S if running else 0)

    def terminate(self) -> None:
        """Stop every worker still running (an interrupted run), then collect their exit codes."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        self.wait()

    def close(self) -> None:
        """Release the workers of a run that will not happen (refused input, a failed claim), wait for them
        and remove their logs unless they are in a claimed run directory already."""
        for worker in self.workers:
            self.release(worker)
        self.wait()
        if not self.claimed:
            for worker in self.workers:
                worker.log.unlink(missing_ok=True)


def card_indices(gpus: int | Sequence[int]) -> list[int]:
    """``--gpus``'s cards: a count N is cards 0..N-1, a sequence names them."""
    return list(range(gpus)) if isinstance(gpus, int) else list(gpus)


def _since_start() -> float:
    return round(time.time() - PROCESS_START_S, 3)


def start_workers(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
                  device: str = "cuda:0", launcher: Launcher | None = None) -> Pool:
    """Start one worker per card (``gpus``: a count, or the card indices); each warms up on ``selection``
    and waits for its payload. Their logs wait next to where the run directory will be (``out_dir``'s
    parent, or results/). `harness.core.spread.run.run_spread` plans and dispatches; a caller that gives up
    before that must `Pool.close` the pool.

    ``device`` is the torch device inside each worker (``cuda:0``: its one visible card; ``cpu`` in
    tests); ``launcher`` turns a worker into its command (default: `worker_command`).
    """
    indices = card_indices(gpus)
    log_dir = Path(out_dir).resolve().parent if out_dir is not None else RESULTS_ROOT
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher = launcher or (lambda _worker: worker_command(selection, device))
    workers = []
    for index in indices:
        worker = Worker(index, log_dir / f".spread-{os.getpid()}-gpu{index}.log")
        with open(worker.log, "w") as log:
            worker.process = subprocess.Popen(launcher(worker), stdin=subprocess.PIPE, stdout=log,
                                              stderr=subprocess.STDOUT, env=card_env(index), text=True)
        worker.started_s = _since_start()
        workers.append(worker)
    return Pool(workers)
