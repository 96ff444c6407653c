"""The workers of a spread run, started first: one per card, warming up while the parent goes on.

What a process pays once (interpreter, torch, CUDA, the engines' imports and probes: 10-15 s on an H200,
FA4's alone 6-7 s) does not divide over cards, and the parent's own start-up (torch, the suite, the
checks: about 4 s) used to come on top of it. So ``python -m harness run --gpus N`` starts the workers
before it imports torch (`start_workers`): on each card the warm worker that ``python -m harness serve``
keeps there (`harness.core.spread.warm`), else a fresh process that loads the suite selection itself, asks
its methods' availability (which imports and probes the engines: `harness.core.spread.run.warm_up`) and
reads its payload's path on stdin. The parent then claims the results directory and hands every worker its
payload at once (`Pool.hand_out`: no plan needed, each worker plans for itself), and only then imports torch
to check the input and plan for the merge. An empty line releases a worker without work (`Pool.release`:
the parent gave up before handing out, `Pool.close`).

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
from harness.core.paths import RESULTS_ROOT, claim_run_dir

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

    @property
    def suite_name(self) -> str:
        """The suite's name as `harness.core.suite.suite_path` reads it (the file's stem), without loading it."""
        return Path(self.suite).stem if self.suite.endswith(".toml") or "/" in self.suite else self.suite

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
    warm: dict | None = None  # a warm worker's state when the run was handed to it (pid, runs served, up_s)


def worker_command(selection: Selection, device: str) -> list[str]:
    """``python -m harness.core.spread SELECTION DEVICE``: a worker that warms up, then reads its payload."""
    return [sys.executable, "-m", "harness.core.spread", json.dumps(selection.__dict__), device]


def card_label(index: int) -> str:
    """Card ``index`` as CUDA_VISIBLE_DEVICES names it: its i-th entry when that is set, else the index."""
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return visible[index] if index < len(visible) else str(index)


def card_env(index: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the worker on card ``index``: ``base`` (default: this process's) with that card
    alone visible and multicast off."""
    return {**(os.environ if base is None else base), **NO_MULTICAST_ENV, "CUDA_VISIBLE_DEVICES": card_label(index)}


Launcher = Callable[[Worker], list[str]]


class Pool:
    """The started workers of one spread run (see the module docstring)."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self.claimed = False  # the logs are in the run directory: never removed from there
        self.run_dir: Path | None = None  # once handed out (`hand_out`): the claimed directory and run id
        self.run_id: str | None = None
        self.dir_existed = False  # the claimed directory was there before (given with --out): a refusal keeps it

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

    def dispatch(self, worker: Worker, directory: Path, payload: dict) -> None:
        """Write ``payload`` next to the worker's results directory and hand the worker its path."""
        worker.directory = directory
        worker.payload = directory.with_suffix(".payload.json")
        tmp = worker.payload.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, worker.payload)
        self._send(worker, f"{worker.payload}\n")

    def hand_out(self, selection: Selection, out_dir: str | Path | None, device: str) -> tuple[Path, str]:
        """Claim the run directory and hand every worker its payload (`worker_payload`): before the parent has
        imported torch or loaded the suite, which it then checks while the workers run. Each worker plans
        for itself (the plan is deterministic), so nothing here waits for the suite. Returns (directory, run id)."""
        if self.run_dir is not None:
            return self.run_dir, self.run_id
        self.dir_existed = out_dir is not None and Path(out_dir).exists()
        self.run_dir, self.run_id = claim_run_dir(out_dir, selection.suite_name, RESULTS_ROOT)
        self.move_logs(self.run_dir)
        for position, worker in enumerate(self.workers):
            directory = self.run_dir / f"gpu{worker.index}"
            self.dispatch(worker, directory, worker_payload(len(self.workers), position, directory, device,
                                                            self.first_calls))
        return self.run_dir, self.run_id

    @property
    def first_calls(self) -> bool:
        """Whether the plan counts each method's first call per unit: yes unless every worker is warm."""
        return not all(worker.warm for worker in self.workers)

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


def worker_payload(cards: int, position: int, directory: Path, device: str, first_calls: bool = True) -> dict:
    """What a worker is handed: how many cards the run has, its position among them, where it writes, its
    torch device, and whether the plan counts first calls (False: every worker of the run is warm). Nothing
    from the parent's plan: the worker plans for itself (`harness.core.spread.run.worker_units`)."""
    return {"cards": cards, "position": position, "out": str(directory), "device": device, "first_calls": first_calls}


def card_indices(gpus: int | Sequence[int]) -> list[int]:
    """``--gpus``'s cards: a count N is cards 0..N-1, a sequence names them."""
    return list(range(gpus)) if isinstance(gpus, int) else list(gpus)


def _since_start() -> float:
    return round(time.time() - PROCESS_START_S, 3)


def start_workers(selection: Selection, gpus: int | Sequence[int], out_dir: str | Path | None = None,
                  device: str = "cuda:0", launcher: Launcher | None = None) -> Pool:
    """One worker per card (``gpus``: a count, or the card indices): the card's warm worker where one serves
    this checkout (`harness.core.spread.warm.connect`), else a fresh process; each warms up on
    ``selection`` and waits for its payload. Their logs wait next to where the run directory will be
    (``out_dir``'s parent, or results/). `harness.core.spread.run.run_spread` hands out the work and waits; a
    caller that gives up before that must `Pool.close` the pool. A card whose warm worker is busy with
    another run raises `harness.core.spread.warm.CardBusy` (the workers started so far are released).

    ``device`` is the torch device inside each fresh worker (``cuda:0``: its one visible card; ``cpu`` in
    tests); ``launcher`` turns a worker into its command (default: `worker_command`; a launcher given means
    fresh workers only).
    """
    from harness.core.spread import warm

    indices = card_indices(gpus)
    log_dir = Path(out_dir).resolve().parent if out_dir is not None else RESULTS_ROOT
    log_dir.mkdir(parents=True, exist_ok=True)
    ask_warm = launcher is None
    launcher = launcher or (lambda _worker: worker_command(selection, device))
    workers = []
    pool = Pool(workers)
    for index in indices:
        worker = Worker(index, log_dir / f".spread-{os.getpid()}-gpu{index}.log")
        worker.log.touch()
        try:
            found, state = warm.connect(card_label(index), selection.__dict__, worker.log) if ask_warm else (None, "")
        except warm.CardBusy:
            worker.log.unlink(missing_ok=True)
            pool.close()
            raise
        if found is not None:
            worker.process, worker.warm = found, state
        else:
            with open(worker.log, "a") as log:
                if state:  # a warm worker was there and could not take the run: say why in the card's log
                    print(f"fresh worker: {state}", file=log, flush=True)
                worker.process = subprocess.Popen(launcher(worker), stdin=subprocess.PIPE, stdout=log,
                                                  stderr=subprocess.STDOUT, env=card_env(index), text=True)
        workers.append(worker)
        worker.started_s = _since_start()
    return pool
