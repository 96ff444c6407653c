"""A/B mode of the gate: two git revisions timed on the same card, interleaved, then gated B against A.

`run_ab` checks each revision out into a temporary worktree (``git worktree add --detach``) and starts one
persistent worker per revision: ``python -m harness.apps.gate.abtest --worker`` with PYTHONPATH at that worktree,
so each side imports its own kernels and baselines. For every case both workers prepare it (and check its
correctness); then timing rounds alternate between them, A B, B A, A B, ..., so clock and power drift hit
both sides alike, as asv's ``--interleave-rounds`` does. The samples become two results files that
the gate (`harness.apps.gate.compare`, which calls `run`) judges, B (candidate) against A (reference).

Worker protocol: one JSON object per line each way, on the worker's stdin and stdout (anything else the
worker prints goes to stderr). Requests and replies:

    {"op": "hello"}                         -> {"ok": true, "protocol": 1, "root": DIR, "env": {fingerprint}}
    {"op": "prepare", "case": {...}}        -> {"ok": true, "row": {case, method, problem, status, ...}}
    {"op": "time", "n": N, "warmup_ms": W}  -> {"ok": true, "samples_ms": [N floats]}   (the prepared case)
    {"op": "quit"}                          -> {"ok": true}, and the worker exits

A failed request answers ``{"ok": false, "error": "..."}`` and the worker waits for the next one; the parent
records that side of the case as "failed" (say, a method the older revision does not have). The case
payload is `harness.core.cases.CaseSpec.to_dict()` plus the suite's correctness policy; the worker makes it
ready through the case lifecycle (`harness.core.lifecycle`); ``--builder module:function`` swaps the
function that turns it into something to time (tests use a fake that sleeps).
Only commits are compared: uncommitted changes are in neither worktree.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from harness import PROJECT_ROOT
from harness.core.cases import CaseSpec
from harness.core.lifecycle import case_row, default_device, make_ready
from harness.core.results import RESULTS_NAME, ResultsFile
from harness.core.schema import Row
from harness.core.suite import load_suite
from harness.measure import stats
from harness.measure.correctness import CorrectnessPolicy
from harness.measure.envinfo import fingerprint
from harness.measure.timing import TimingPolicy, time_interleaved

PROTOCOL = 1
DEFAULT_BUILDER = "harness.apps.gate.abtest:build_case"
FIRST_WARMUP_MS = 200.0  # the first round of a case: caches, clocks and lazy init settle
ROUND_WARMUP_MS = 20.0  # later rounds: the other revision's kernels ran in between


class AbTestError(RuntimeError):
    """A worker, a revision or a worktree that the A/B run cannot use; the message says which and why."""


class WorkerRequestError(AbTestError):
    """A worker answered one request with an error (and is still serving)."""


# ---- the worker: one process per revision ------------------------------------------------------------------

@dataclass
class PreparedCase:
    """A case made ready in a worker: its results row so far and the zero-argument call to time
    (None when the case cannot run here: the row's status and reason say why)."""

    row: dict
    call: Callable[[], object] | None


Builder = Callable[[Mapping, object], PreparedCase]  # (case payload, torch.device) -> PreparedCase


def build_case(payload: Mapping, device) -> PreparedCase:
    """The real builder: the case lifecycle (available, prepared, first call, checked against the exact
    reference with the suite's tolerances from ``payload["correctness"]``) on inputs it holds."""
    case = CaseSpec.from_dict(payload)
    row = {**case_row(case), "case": payload["case"]}  # the parent's id, even if this revision names it otherwise
    policy = CorrectnessPolicy(**payload.get("correctness", {}))
    state = make_ready(case.method, case.problem, device, policy, case.problem.random_qkv(device, seed=1), seed=0)
    row.update(state.fields)
    return PreparedCase(row, state.call if state.ready else None)


def load_builder(spec: str) -> Builder:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"builder {spec!r} is not 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


class WorkerSession:
    """The worker's side of the protocol: holds the one prepared case and answers requests."""

    def __init__(self, build: Builder, device):
        self.build, self.device = build, device
        self.case: PreparedCase | None = None
        self.ops = {"hello": self.hello, "prepare": self.prepare, "time": self.time}

    def hello(self, request: Mapping) -> dict:
        return {"protocol": PROTOCOL, "root": str(PROJECT_ROOT), "env": fingerprint(self.device)}

    def prepare(self, request: Mapping) -> dict:
        self.case = None  # release the previous case's tensors before building the next
        self.case = self.build(request["case"], self.device)
        return {"row": self.case.row}

    def time(self, request: Mapping) -> dict:
        if self.case is None or self.case.call is None:
            raise ValueError("no runnable case is prepared: send 'prepare' first")
        n = int(request["n"])
        policy = TimingPolicy(warmup_ms=float(request.get("warmup_ms", ROUND_WARMUP_MS)), min_samples=n,
                              max_samples=n, rounds=1)
        return {"samples_ms": time_interleaved({"case": self.case.call}, policy, self.device)["case"]}

    def handle(self, request: Mapping) -> dict:
        op = request.get("op")
        if op not in self.ops:
            raise ValueError(f"unknown op {op!r}; valid: {', '.join([*self.ops, 'quit'])}")
        return self.ops[op](request)


def serve(lines: Iterable[str], send: Callable[[dict], None], session: WorkerSession) -> None:
    """Answer requests until 'quit' or end of input; a failing request is answered, never fatal."""
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "quit":
                send({"ok": True})
                return
            send({"ok": True, **session.handle(request)})
        except Exception as exc:  # the parent decides what an error means; the worker stays up
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.apps.gate.abtest", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", required=True, help="serve the protocol on stdin/stdout")
    parser.add_argument("--builder", default=DEFAULT_BUILDER, help="module:function turning a case into a call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    # Keep the protocol channel clean: replies go to the original stdout, stray prints (ours, Triton's,
    # a library's) to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    device = torch.device(args.device) if args.device else default_device()
    session = WorkerSession(load_builder(args.builder), device)

    def send(reply: dict) -> None:
        channel.write(json.dumps(reply) + "\n")

    serve(sys.stdin, send, session)
    return 0


# ---- the parent: worktrees, workers, interleaved rounds ---------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AbTestError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def worktree(repo: Path, revision: str, path: Path) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``revision`` at ``path``; yields (path, commit); removed on exit."""
    try:
        commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except AbTestError:
        raise AbTestError(f"{revision!r} is not a commit of {repo}") from None
    _git(repo, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path, commit
    finally:
        _git(repo, "worktree", "remove", "--force", str(path))


# Where the worker lives in each layout of the tree, newest first (revisions before the layered harness
# kept it at harness/abtest.py), so that A/B can compare across the move.
WORKER_MODULES = ("harness.apps.gate.abtest", "harness.abtest")


def worker_module(root: Path) -> str | None:
    """The worker's module in the checkout at ``root``, or None when that revision has none."""
    for module in WORKER_MODULES:
        if (root / (module.replace(".", "/") + ".py")).is_file():
            return module
    return None


class WorkerProcess:
    """The parent's handle on one worker: send a request, read its one-line reply."""

    def __init__(self, label: str, root: Path, builder: str = DEFAULT_BUILDER, extra_path: Sequence[str] = (),
                 device: str | None = None):
        self.label, self.root = label, root
        self.env: dict = {}  # the worker's fingerprint, from its hello
        module = worker_module(root)
        if module is None:
            raise AbTestError(f"revision {label} has no A/B worker ({' or '.join(WORKER_MODULES)}): "
                              "it predates A/B mode")
        # the worktree first, so it shadows any other checkout; the rest (say, a wheel dir) stays reachable
        path = [str(root), *extra_path, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        if builder == DEFAULT_BUILDER:  # that revision's own builder, wherever its layout keeps it
            builder = f"{module}:build_case"
        command = [sys.executable, "-m", module, "--worker", "--builder", builder]
        self.proc = subprocess.Popen(command + (["--device", device] if device else []), cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def request(self, op: str, **fields) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died: readline() below says so
        line = self.proc.stdout.readline()
        if not line:
            raise AbTestError(f"worker {self.label} exited (code {self.proc.wait()}) during {op!r}; "
                              "its stderr is above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerRequestError(f"worker {self.label}, {op!r}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request("quit")
                self.proc.wait(timeout=30)
            except (AbTestError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


@contextmanager
def workers(roots: Mapping[str, Path], builder: str, extra_path: Sequence[str] = (),
            device: str | None = None) -> Iterator[dict[str, WorkerProcess]]:
    """One running worker per label, each checked to import its own tree's harness; all closed on exit."""
    started: dict[str, WorkerProcess] = {}
    try:
        for label, root in roots.items():
            started[label] = WorkerProcess(label, root, builder, extra_path, device)
        for label, worker in started.items():
            hello = worker.request("hello")
            if hello.get("protocol") != PROTOCOL:
                raise AbTestError(f"worker {label} speaks protocol {hello.get('protocol')}, this one {PROTOCOL}")
            if Path(hello["root"]).resolve() != roots[label].resolve():
                raise AbTestError(f"worker {label} imported harness from {hello['root']}, not {roots[label]}")
            worker.env = hello.get("env") or {}
        yield started
    finally:
        for worker in started.values():
            worker.close()


def _failed_row(payload: Mapping, error: Exception) -> dict:
    return Row(kind="kernel", case=payload["case"], method=payload.get("method_name"),
               problem=payload.get("problem"), status="failed", reason=str(error)).to_dict()


def alternating_orders(n_sides: int, rounds: int) -> list[list[int]]:
    """Each round's order of the sides (indices into the labels): A B, B A, A B, ..."""
    return [list(range(n_sides))[::1 if index % 2 == 0 else -1] for index in range(rounds)]


def schedule_fields(data: Mapping, case: str, labels: Sequence[str], policy: Mapping) -> dict:
    """``schedule`` and ``schedule_orders`` with one timed case added, as the runner records a group: its
    "cases" are the sides' labels, each round (``round_samples`` calls of one side) in `alternating_orders`."""
    schedule = data.get("schedule") or {"kind": "ab-alternating-rounds", "rounds": policy["rounds"],
                                        "round_samples": policy["round_samples"]}
    orders = {**(data.get("schedule_orders") or {}), case: alternating_orders(len(labels), policy["rounds"])}
    return {"schedule": {**schedule, "cases": {**schedule.get("cases", {}), case: list(labels)}},
            "schedule_orders": orders}


def time_case(pair: Mapping[str, WorkerProcess], payload: Mapping, rounds: int, round_samples: int) -> dict:
    """Prepare one case in both workers and, when both can run it, time it in alternating rounds (A B, B A,
    ...: `alternating_orders`). Returns {label: results row}; a side whose request fails gets a "failed" row."""
    rows = {}
    for label, worker in pair.items():
        try:
            rows[label] = worker.request("prepare", case=payload)["row"]
        except WorkerRequestError as exc:  # e.g. a method this revision does not know
            rows[label] = _failed_row(payload, exc)
    if any(row.get("status") != "ok" for row in rows.values()):
        return rows  # nothing to compare; the gate reports the statuses
    samples: dict[str, list[float]] = {label: [] for label in pair}
    labels = list(pair)
    for round_index, order in enumerate(alternating_orders(len(labels), rounds)):
        warmup_ms = FIRST_WARMUP_MS if round_index == 0 else ROUND_WARMUP_MS
        for label in (labels[index] for index in order):
            try:
                reply = pair[label].request("time", n=round_samples, warmup_ms=warmup_ms)
            except WorkerRequestError as exc:  # the call itself raised at this revision
                return {**rows, label: _failed_row(payload, exc)}
            samples[label] += reply["samples_ms"]
    return {label: {**row, "samples_ms": samples[label], **stats.summarize(samples[label])}
            for label, row in rows.items()}


def run_ab(repo: Path, revisions: Mapping[str, str], payloads: Sequence[Mapping], out_dir: Path,
           suite: str | None = None, rounds: int = 10, round_samples: int = 10, builder: str = DEFAULT_BUILDER,
           extra_path: Sequence[str] = (), device: str | None = None) -> dict[str, dict]:
    """Time every case of ``payloads`` at each revision ({label: git revision}); write one results file
    per label under ``out_dir/<label>/`` and return {label: results dict}."""
    if rounds < 2 or round_samples < 1:
        raise ValueError(f"need rounds >= 2 (to alternate the order) and round_samples >= 1, "
                         f"got {rounds} and {round_samples}")
    policy = {"mode": "ab", "rounds": rounds, "round_samples": round_samples,
              "first_warmup_ms": FIRST_WARMUP_MS, "round_warmup_ms": ROUND_WARMUP_MS}
    with ExitStack() as stack:
        parent = Path(tempfile.mkdtemp(prefix="hilberta-ab-"))
        stack.callback(shutil.rmtree, parent, ignore_errors=True)
        trees = {label: stack.enter_context(worktree(repo, rev, parent / label))
                 for label, rev in revisions.items()}
        pair = stack.enter_context(workers({label: path for label, (path, _) in trees.items()}, builder,
                                           extra_path, device))
        files = {}
        for label, (_, commit) in trees.items():
            files[label] = ResultsFile(out_dir / label / RESULTS_NAME, run_id=f"ab-{label}-{commit[:12]}",
                                       suite=suite, policy=policy,
                                       extra={"revision": {"label": label, "rev": revisions[label],
                                                           "commit": commit}})
            files[label].write_env(pair[label].env)
        for payload in payloads:
            rows = time_case(pair, payload, rounds, round_samples)
            for label, row in rows.items():
                files[label].add_case(row)
                if all(r.get("samples_ms") for r in rows.values()):  # both sides timed: their round orders
                    files[label].set(**schedule_fields(files[label].data, payload["case"], list(rows), policy))
        return {label: results.data for label, results in files.items()}


# ---- command line (through `python -m harness gate --ab REV_A REV_B`) ------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("A/B mode: time two revisions interleaved on this card")
    group.add_argument("--ab", nargs=2, metavar=("REV_A", "REV_B"),
                       help="gate revision B (candidate) against revision A (reference)")
    group.add_argument("--suite", help="the suite whose cases A/B mode times (e.g. bench-ci)")
    group.add_argument("--methods", nargs="+", help="only these methods of the suite (names or families)")
    group.add_argument("--rounds", type=int, default=10, help="alternating rounds per case (default 10)")
    group.add_argument("--round-samples", type=int, default=10,
                       help="calls timed per revision per round (default 10)")


@dataclass(frozen=True)
class AbSettings:
    """What ``gate --ab`` was asked: the two revisions, the suite (and methods) to time, and the rounds."""

    rev_a: str
    rev_b: str
    suite: str
    methods: tuple[str, ...] | None = None
    rounds: int = 10
    round_samples: int = 10
    out: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AbSettings:
        if not args.suite:
            raise ValueError("name the suite to time with --suite (e.g. bench-ci)")
        methods = tuple(name for value in args.methods for name in value.split(",") if name) if args.methods else None
        out = Path(args.out or f"results/ab-{datetime.now():%Y%m%d-%H%M%S}")
        return cls(args.ab[0], args.ab[1], args.suite, methods, args.rounds, args.round_samples, out)


def run(settings: AbSettings) -> dict[str, dict]:
    """Time the suite's cases at both revisions; {"a": results, "b": results} for the gate to judge.
    Raises AbTestError, OSError or ValueError when the run is unusable."""
    suite = load_suite(settings.suite)
    if settings.methods:
        suite = suite.select(methods=list(settings.methods))
    correctness = suite.correctness.to_dict()
    payloads = [{**case.to_dict(), "correctness": correctness} for case in suite.cases()]
    repo = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    return run_ab(repo, {"a": settings.rev_a, "b": settings.rev_b}, payloads, settings.out, suite=suite.name,
                  rounds=settings.rounds, round_samples=settings.round_samples)


if __name__ == "__main__":
    raise SystemExit(worker_main())
