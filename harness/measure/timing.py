"""Timing of callables: warm-up by time, then rounds of single calls in a fresh balanced order, one number per call.

`time_interleaved` times the callables of one problem group together. After a warm-up by time (whole
rounds, in random orders, until ``warmup_ms`` per callable has passed), it runs *rounds*: in each round
every callable is called once (or ``block`` times in a row), in the order that
`harness.measure.schedule.round_orders` gives that round (seeded randomized Williams squares: a new order
every round, each callable equally often in each position and after each other callable). So slow drifts
(clocks falling under the power cap, the card heating up) and the state a call inherits from the previous
one hit every callable alike, and a callable is never judged by its slot in the order.

On CUDA each sample is one pair of CUDA events around one call, with an optional L2 flush (zeroing a
buffer of twice the L2 size) before every call, outside the events, so that no callable profits from data
left in L2 by the previous call. Each sample's start is also placed on the host clock
(``time.perf_counter``, the clock of `harness.measure.power.PowerSampler`): an event recorded after a chunk
of rounds is synchronized and read against the host clock, and every start event's distance to it gives
its host time, so NVML samples can be attributed to the call that ran at that instant. Optionally each
callable is captured once into a CUDA graph and the replays are timed instead (falling back to eager calls,
with the reason recorded, when capture fails). On CPU each sample is ``time.perf_counter`` around one call.

The number of rounds: at least ``rounds`` and enough for ``min_samples`` per callable; then more until a
callable has ``max_samples`` or the group's wall time reaches ``budget_ms`` per callable. Rounds are
enqueued in chunks of about `CHUNK_MS` between synchronizations, so the budget is re-checked often while
the device queue stays full.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from harness.measure.schedule import round_orders

TimedFn = Callable[[], object]
ProgressFn = Callable[[str, int, int], None]  # (name, round index, samples so far)

CHUNK_MS = 50.0  # wall time of the rounds enqueued between two synchronizations


class TimedFnError(RuntimeError):
    """A timed callable raised; ``name`` says which one, ``__cause__`` holds the original exception."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(f"{name}: {type(error).__name__}: {error}")
        self.name = name


@dataclass(frozen=True)
class TimingPolicy:
    warmup_ms: float = 100.0  # wall time of warm-up rounds per callable (at least one round)
    min_samples: int = 10  # per callable, even when that overruns the budget
    max_samples: int = 200  # per callable
    budget_ms: float = 2000.0  # wall time per callable; the group gets budget_ms x callables
    rounds: int = 5  # at least this many rounds (the block bootstrap resamples rounds)
    l2_flush: bool = True  # CUDA only
    cuda_graph: bool = False  # CUDA only
    block: int = 1  # consecutive calls of one callable per turn: 1 = interleave single calls
    seed: int = 0  # of the round orders (recorded with them)

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.budget_ms <= 0:
            raise ValueError(f"warmup_ms must be >= 0 and budget_ms > 0, got {self.warmup_ms}, {self.budget_ms}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 1 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if self.rounds < 1 or self.block < 1:
            raise ValueError(f"rounds and block must be >= 1, got {self.rounds}, {self.block}")

    def to_dict(self) -> dict:
        return asdict(self)

    def round_range(self) -> tuple[int, int]:
        """(fewest, most) rounds: the floor is met even beyond the budget, the ceiling never passed."""
        fewest = max(self.rounds, math.ceil(self.min_samples / self.block))
        return fewest, max(fewest, math.ceil(self.max_samples / self.block))


class TimingResult(dict):
    """``{name: [ms per call, in the order taken]}`` with, per name, ``.t_s`` (start of each call, s after
    ``.origin_s``, the host ``perf_counter`` time at which the first round began), ``.rounds`` (the round
    of each call) and ``.details`` (timer, mode, why a CUDA graph was not used, warm-up calls); for the
    group, ``.orders`` (per round, the indices into the callables as passed) and ``.schedule``."""

    def __init__(self, samples: dict[str, list[float]], t_s: dict[str, list[float]], rounds: dict[str, list[int]],
                 details: dict[str, dict], orders: list[list[int]], schedule: dict, origin_s: float):
        super().__init__(samples)
        self.t_s, self.rounds, self.details = t_s, rounds, details
        self.orders, self.schedule, self.origin_s = orders, schedule, origin_s

    def windows(self, name: str) -> list[tuple[float, float]]:
        """``[(start, end))`` of each call of ``name`` on the host ``perf_counter`` clock (the sampler's)."""
        return [(self.origin_s + t, self.origin_s + t + ms / 1e3) for t, ms in zip(self.t_s[name], self[name])]


class _CpuTimer:
    """perf_counter around each call; L2 flushing and graphs do not apply."""

    def __init__(self, device: torch.device, policy: TimingPolicy):
        self.info = {"timer": "perf_counter", "l2_flush": False}

    def prepare(self, fn: TimedFn) -> tuple[TimedFn, dict]:
        return fn, {"mode": "eager"}

    def call(self, fn: TimedFn):
        start = time.perf_counter()
        fn()
        return start, (time.perf_counter() - start) * 1e3

    def collect(self, tokens: list) -> list[tuple[float, float]]:
        return tokens


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

    def call(self, fn: TimedFn):
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        return start, end

    def collect(self, tokens: list) -> list[tuple[float, float]]:
        """(host start time, ms) of each call: an event recorded after them, completed at ~now."""
        anchor = torch.cuda.Event(enable_timing=True)
        anchor.record()
        torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        return [(now - start.elapsed_time(anchor) / 1e3, start.elapsed_time(end)) for start, end in tokens]


_TIMERS = {"cpu": _CpuTimer, "cuda": _CudaTimer}
# Where events and the callables' kernels go while timing: the measured device.
_SCOPES = {"cpu": lambda device: contextlib.nullcontext(), "cuda": torch.cuda.device}


def _resolve_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in _TIMERS:
        raise ValueError(f"cannot time on device type {device.type!r}; supported: {sorted(_TIMERS)}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_scope(device: torch.device | str):
    """The context in which to time on ``device`` (its CUDA device made current); resolves the device."""
    device = _resolve_device(device)
    return _SCOPES[device.type](device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CallGroup:
    """The prepared callables of one schedule and the timer that calls them (used inside the device's
    scope, `device_scope`); `run_rounds` calls them in given orders, flushing L2 before each call, and
    `warm_up` runs random rounds for a while first."""

    def __init__(self, fns: dict[str, TimedFn], policy: TimingPolicy, device: torch.device | str):
        device = _resolve_device(device)
        self.names, self.block = list(fns), policy.block
        self.timer = _TIMERS[device.type](device, policy)
        self.calls, self.details = [], []
        for name, fn in fns.items():
            try:
                call, details = self.timer.prepare(fn)
            except Exception as exc:
                raise TimedFnError(name, exc) from exc
            self.calls.append(call)
            self.details.append({**self.timer.info, **details})

    def run_rounds(self, orders: list[list[int]]) -> tuple[list[tuple[int, int, float, float]], float]:
        """Call the rounds in ``orders`` (case indices; one may appear more than once), then synchronize:
        ``([(case, round offset, host start, ms)], wall seconds)``."""
        start = time.perf_counter()
        tokens, keys = [], []
        for offset, order in enumerate(orders):
            for case in order:
                for _ in range(self.block):
                    try:
                        tokens.append(self.timer.call(self.calls[case]))
                    except Exception as exc:
                        raise TimedFnError(self.names[case], exc) from exc
                    keys.append((case, offset))
        timed = self.timer.collect(tokens)
        return [(c, o, t, ms) for (c, o), (t, ms) in zip(keys, timed)], time.perf_counter() - start

    def warm_up(self, warmup_ms: float, seed: int) -> int:
        """Whole rounds in random orders until ``warmup_ms`` per callable has passed; the number of rounds."""
        rng = np.random.default_rng([seed, 1])
        n, done, elapsed_s, per_round_s = len(self.names), 0, 0.0, None
        while done == 0 or elapsed_s * 1e3 < warmup_ms * n:
            k = 1 if per_round_s is None else max(1, math.ceil((warmup_ms * n / 1e3 - elapsed_s) / per_round_s))
            k = min(k, 2 * done + 1)  # grow the batch gradually while the estimate settles
            _, wall_s = self.run_rounds([list(rng.permutation(n)) for _ in range(k)])
            done, elapsed_s, per_round_s = done + k, elapsed_s + wall_s, max(wall_s / k, 1e-9)
        return done



def time_interleaved(fns: dict[str, TimedFn], policy: TimingPolicy, device: torch.device | str,
                     progress: ProgressFn | None = None) -> TimingResult:
    """Milliseconds per call of each callable, in balanced randomized rounds (see the module docstring).

    A callable that raises stops the whole measurement with `TimedFnError` naming it.
    ``progress(name, round_index, n_samples)`` is called for every callable after each chunk of rounds.
    """
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    device = _resolve_device(device)
    fewest, most = policy.round_range()
    orders = round_orders(len(fns), most, policy.seed)
    n = len(fns)
    samples, t_s, rounds = ([[] for _ in range(n)] for _ in range(3))
    with device_scope(device):
        group = CallGroup(fns, policy, device)
        warmup_rounds = group.warm_up(policy.warmup_ms, policy.seed)
        budget_s, spent_s, done, per_round_s = policy.budget_ms * n / 1e3, 0.0, 0, None
        origin_s = None
        while done < most and (done < fewest or spent_s < budget_s):
            k = 1 if per_round_s is None else max(1, int(CHUNK_MS / 1e3 / per_round_s))
            if per_round_s is not None:  # within the budget left, but never short of the floor
                k = min(k, max(fewest - done, math.ceil((budget_s - spent_s) / per_round_s)))
            k = min(k, most - done)
            timed, wall_s = group.run_rounds(orders[done:done + k])
            origin_s = timed[0][2] if origin_s is None else origin_s
            for case, offset, start_s, ms in timed:
                samples[case].append(ms)
                t_s[case].append(start_s - origin_s)
                rounds[case].append(done + offset)
            done, spent_s, per_round_s = done + k, spent_s + wall_s, max(wall_s / k, 1e-9)
            for i, name in enumerate(group.names if progress is not None else ()):
                progress(name, done - 1, len(samples[i]))
    names = group.names
    for details in group.details:
        details.update(warmup_calls=warmup_rounds * policy.block, calls_per_round=policy.block)
    schedule = {"kind": "interleaved-single-call" if policy.block == 1 else f"interleaved-blocks-of-{policy.block}",
                "rounds": done, "l2_flush": group.timer.info["l2_flush"], "seed": policy.seed,
                "warmup_rounds": warmup_rounds, "spent_ms": spent_s * 1e3}
    return TimingResult(dict(zip(names, samples)), dict(zip(names, t_s)), dict(zip(names, rounds)),
                        dict(zip(names, group.details)), orders[:done], schedule, origin_s)


def time_once_ms(fn: TimedFn, device: torch.device | str) -> float:
    """Wall time of one call, synchronized on both sides: the first call's compile/autotune cost."""
    device = _resolve_device(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3
