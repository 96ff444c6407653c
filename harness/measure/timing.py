"""Timing of callables: warm-up by time, then interleaved rounds of samples, one number per call.

`time_interleaved` times several callables (the methods of one problem) together: after a warm-up by
time, it runs ``policy.rounds`` rounds, and in each round every callable gets a batch of samples. The
order of the callables rotates from round to round, so slow drifts (clocks falling under the power cap,
the card heating up) hit every method alike instead of whichever happened to run last.

On CUDA each sample is one pair of CUDA events around one call, with an optional L2 flush (zeroing a
buffer of twice the L2 size) before every call, outside the events, so that no method profits from data
left in L2 by the previous call. Optionally the callable is captured once into a CUDA graph and the
replays are timed instead (falling back to eager calls, with the reason recorded, when capture fails).
On CPU each sample is `time.perf_counter` around one call.

Each callable stops when it has ``max_samples`` samples or has spent its time budget (``budget_ms``, wall
time of its sampling, spread evenly over the rounds); it always gets at least ``min_samples``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

TimedFn = Callable[[], object]
ProgressFn = Callable[[str, int, int], None]  # (name, round index, samples so far)

CHUNK_MS = 50.0  # largest batch enqueued at once, so that budgets are re-checked with a fresh estimate


class TimedFnError(RuntimeError):
    """A timed callable raised; ``name`` says which one, ``__cause__`` holds the original exception."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(f"{name}: {type(error).__name__}: {error}")
        self.name = name


@dataclass(frozen=True)
class TimingPolicy:
    warmup_ms: float = 100.0  # wall time of warm-up calls per callable (at least one call)
    min_samples: int = 10  # per callable, even when that overruns its budget
    max_samples: int = 200  # per callable
    budget_ms: float = 2000.0  # wall time of sampling per callable (flushes and launch gaps included)
    rounds: int = 5
    l2_flush: bool = True  # CUDA only
    cuda_graph: bool = False  # CUDA only

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.budget_ms <= 0:
            raise ValueError(f"warmup_ms must be >= 0 and budget_ms > 0, got {self.warmup_ms}, {self.budget_ms}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 1 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    def to_dict(self) -> dict:
        return asdict(self)


class TimingResult(dict):
    """``{name: [ms per call, in the order taken]}``; ``.details[name]`` says how they were taken
    (timer, mode, why a CUDA graph was not used, warm-up calls, samples per round, time spent)."""

    def __init__(self, samples: dict[str, list[float]], details: dict[str, dict]):
        super().__init__(samples)
        self.details = details


class _CpuTimer:
    """perf_counter around each call; L2 flushing and graphs do not apply."""

    def __init__(self, device: torch.device, policy: TimingPolicy):
        self.info = {"timer": "perf_counter", "l2_flush": False}

    def prepare(self, fn: TimedFn) -> tuple[TimedFn, dict]:
        return fn, {"mode": "eager"}

    def sample(self, fn: TimedFn, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return samples


class _CudaTimer:
    """One pair of CUDA events per call; the L2 flush is enqueued before the start event."""

    def __init__(self, device: torch.device, policy: TimingPolicy):
        self.device = device
        self.use_graph = policy.cuda_graph
        self.flush_buffer = None
        l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
        if policy.l2_flush:
            self.flush_buffer = torch.empty(2 * l2_bytes // 4, dtype=torch.int32, device=device)
        self.info = {"timer": "cuda-events", "l2_flush": policy.l2_flush,
                     "flush_bytes": 2 * l2_bytes if policy.l2_flush else 0}

    def prepare(self, fn: TimedFn) -> tuple[TimedFn, dict]:
        if not self.use_graph:
            return fn, {"mode": "eager"}
        # The first call runs eagerly on a side stream: lazy initialisation, compilation and autotuning
        # must not happen during capture. Its errors are the callable's own and propagate.
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    fn()
                torch.cuda.synchronize(self.device)
            except Exception as exc:  # capture is optional: any failure means "time it eagerly"
                torch.cuda.synchronize(self.device)
                return fn, {"mode": "eager", "graph_fallback_reason": f"{type(exc).__name__}: {exc}"}
        return graph.replay, {"mode": "cuda_graph"}

    def sample(self, fn: TimedFn, n: int) -> list[float]:
        with torch.cuda.device(self.device):  # events and the callable's kernels on the measured device
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            for start, end in zip(starts, ends):
                if self.flush_buffer is not None:
                    self.flush_buffer.zero_()
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]


_TIMERS = {"cpu": _CpuTimer, "cuda": _CudaTimer}


def _resolve_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in _TIMERS:
        raise ValueError(f"cannot time on device type {device.type!r}; supported: {sorted(_TIMERS)}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _FnState:
    name: str
    call: TimedFn  # what is timed: the callable itself or its graph's replay
    details: dict
    samples: list[float] = field(default_factory=list)
    spent_ms: float = 0.0  # wall time of sampling so far
    wall_per_call_ms: float = 1.0  # running estimate, from warm-up then from each batch

    def run_batch(self, timer, n: int) -> tuple[list[float], float]:
        """``n`` samples and the wall time (ms) they took; updates the per-call estimate."""
        start = time.perf_counter()
        samples = timer.sample(self.call, n)
        wall_ms = (time.perf_counter() - start) * 1e3
        self.wall_per_call_ms = max(wall_ms / n, 1e-6)
        return samples, wall_ms


def _warm_up(timer, state: _FnState, warmup_ms: float) -> None:
    """Call until ``warmup_ms`` of wall time has passed (at least once), doubling the batch size."""
    calls, batch, start = 0, 1, time.perf_counter()
    while True:
        state.run_batch(timer, batch)
        calls += batch
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if elapsed_ms >= warmup_ms:
            break
        batch = max(1, min(2 * batch, math.ceil((warmup_ms - elapsed_ms) / state.wall_per_call_ms)))
    state.details.update(warmup_calls=calls, warmup_ms=elapsed_ms)


def _take_turn(timer, state: _FnState, policy: TimingPolicy, round_index: int) -> None:
    """One round's batch: up to this round's share of max_samples, within this round's share of the
    budget (unused budget carries over), but never below this round's share of min_samples."""
    share = (round_index + 1) / policy.rounds
    cap = min(policy.max_samples, math.ceil(policy.max_samples * share))
    floor = min(policy.min_samples, math.ceil(policy.min_samples * share))
    allowance_ms = policy.budget_ms * share
    taken = 0
    while len(state.samples) < cap:
        if state.spent_ms >= allowance_ms:
            if len(state.samples) >= floor:
                break
            n = floor - len(state.samples)
        else:
            n = math.ceil((allowance_ms - state.spent_ms) / state.wall_per_call_ms)
        n = min(n, cap - len(state.samples), max(1, int(CHUNK_MS / state.wall_per_call_ms)))
        samples, wall_ms = state.run_batch(timer, n)
        state.samples.extend(samples)
        state.spent_ms += wall_ms
        taken += n
    state.details["samples_per_round"].append(taken)


def time_interleaved(fns: dict[str, TimedFn], policy: TimingPolicy, device: torch.device | str,
                     progress: ProgressFn | None = None) -> TimingResult:
    """Milliseconds per call of each callable, taken in interleaved rounds (see the module docstring).

    A callable that raises stops the whole measurement with `TimedFnError` naming it.
    ``progress(name, round_index, n_samples)`` is called after each callable's turn.
    """
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    device = _resolve_device(device)
    timer = _TIMERS[device.type](device, policy)
    states = []
    for name, fn in fns.items():
        try:
            call, details = timer.prepare(fn)
        except Exception as exc:
            raise TimedFnError(name, exc) from exc
        states.append(_FnState(name, call, {**timer.info, **details, "samples_per_round": []}))

    def guarded(state: _FnState, action: Callable, *args) -> None:
        try:
            action(timer, state, *args)
        except Exception as exc:
            raise TimedFnError(state.name, exc) from exc

    for state in states:
        guarded(state, _warm_up, policy.warmup_ms)
    for round_index in range(policy.rounds):
        shift = round_index % len(states)
        for state in states[shift:] + states[:shift]:
            guarded(state, _take_turn, policy, round_index)
            if progress is not None:
                progress(state.name, round_index, len(state.samples))
    for state in states:
        state.details["spent_ms"] = state.spent_ms
    return TimingResult({s.name: s.samples for s in states}, {s.name: s.details for s in states})


def time_once_ms(fn: TimedFn, device: torch.device | str) -> float:
    """Wall time of one call, synchronized on both sides: the first call's compile/autotune cost."""
    device = _resolve_device(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3
