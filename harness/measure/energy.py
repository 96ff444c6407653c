"""Energy per call of each case of a problem group, measured under the interleaved schedule.

The cases are called as in `harness.measure.timing.time_interleaved` (single calls in a fresh random
order every round, the L2 flushed before each call), so each case's energy is taken at the clocks and
power of the same mix in which it was timed, not at whatever clock it would reach alone. NVML has only
one energy counter for the whole card, and it moves in steps (every ~100 ms on an H100), so the card is
kept busy in *segments* of rounds (each ~``segment_s``) and a segment ends only when the counter steps:
after its planned rounds, whole rounds in random order follow until the counter moves, and they count as
the segment's calls. So a reading covers the energy up to within one round of the segment's end, and
the card never idles between segments (an idle gap would both cost energy of its own and let the
clocks leave the mix's regime).

In complete rounds every case is called once, so the counter would only give the sum of their
energies; in each segment a planned random half of the cases is called twice per round instead
(`harness.measure.schedule.energy_weights`), so the cases' call counts differ between segments, and a
least-squares fit (`harness.measure.stats.split_energy`) of ``energy[segment] = sum_c calls[segment, c]
* e[c]`` recovers each ``e[c]`` with a standard error from the residuals. Each call's energy includes
the L2 flush before it and the launch gap (the same for every case), so ``mean_watts`` (energy over the
call's median time) runs a little above the power the call itself draws.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch

from harness.measure.power import NvmlUnavailable, NvmlReader, unavailable
from harness.measure.schedule import energy_weights
from harness.measure.stats import split_energy
from harness.measure.timing import CallGroup, TimedFn, TimingPolicy, device_scope

ENERGY_SOURCE = "nvmlDeviceGetTotalEnergyConsumption, least-squares split over segments"


def _until_step(group: CallGroup, reader, rng: np.random.Generator, wait_s: float) -> tuple[np.ndarray, float]:
    """Whole random rounds until the energy counter steps (or ``wait_s`` passes): ``(calls of each case,
    joules on the counter then)``."""
    n = len(group.names)
    calls, first, deadline = np.zeros(n), reader.energy_mj(), time.perf_counter() + wait_s
    while True:
        group.run_rounds([list(rng.permutation(n))])
        calls += group.block
        value = reader.energy_mj()
        if value is None or first is None:
            raise NvmlUnavailable("an energy counter read failed mid-measurement")
        if value != first or time.perf_counter() >= deadline:
            return calls, value / 1e3


def measure_energy_interleaved(fns: dict[str, TimedFn], device: torch.device | str, policy: TimingPolicy,
                               segment_s: float = 0.5, n_segments: int | None = None,
                               counter_wait_s: float = 0.25) -> dict[str, dict]:
    """``{name: {"joules_per_call", "joules_per_call_se", "mean_watts", ...}}`` (see the module docstring);
    every case is ``unavailable`` with the reason when the energy counter cannot be read. ``n_segments``
    defaults to twice the number of cases (at least 8); ``policy`` gives the warm-up, flush, graph mode
    and seed; ``counter_wait_s`` is the longest a segment is extended while waiting for the counter."""
    if segment_s <= 0:
        raise ValueError(f"segment_s must be positive, got {segment_s}")
    try:
        reader = NvmlReader(device)
    except NvmlUnavailable as exc:
        return {name: unavailable(str(exc)) for name in fns}
    if reader.energy_mj() is None:
        return {name: unavailable("the NVML energy counter cannot be read on this device") for name in fns}
    n = len(fns)
    weights = energy_weights(n, n_segments or max(8, 2 * n), policy.seed)
    rng = np.random.default_rng([policy.seed, 2])
    calls, joules, call_ms = np.zeros(weights.shape), np.zeros(len(weights)), [[] for _ in range(n)]
    try:
        with device_scope(device):
            group = CallGroup(fns, policy, device)
            group.warm_up(policy.warmup_ms, policy.seed)  # the clocks settle into the mix's regime first
            timed, _ = group.run_rounds([list(rng.permutation(n)) for _ in range(2)])  # sizes the segments
            once_s = [statistics.median(ms for c, _, _, ms in timed if c == case) / 1e3 for case in range(n)]
            _, before_j = _until_step(group, reader, rng, counter_wait_s)
            for k, w in enumerate(weights):
                rounds = max(1, math.ceil(segment_s / max(float(w @ once_s), 1e-6) / policy.block))
                timed, _ = group.run_rounds([list(rng.permutation(np.repeat(np.arange(n), w))) for _ in range(rounds)])
                extra_calls, after_j = _until_step(group, reader, rng, counter_wait_s)
                calls[k], joules[k] = w * rounds * policy.block + extra_calls, after_j - before_j
                before_j = after_j
                for case, _, _, ms in timed:
                    call_ms[case].append(ms)
    except NvmlUnavailable as exc:
        return {name: unavailable(str(exc)) for name in fns}
    per_call, se = split_energy(calls, joules)
    return {name: {"status": "ok", "schedule": "interleaved", "joules_per_call": float(per_call[i]),
                   "joules_per_call_se": float(se[i]),
                   "mean_watts": float(per_call[i]) / (statistics.median(call_ms[i]) / 1e3),
                   "calls": int(calls[:, i].sum()), "segments": len(weights), "segment_s": segment_s,
                   "l2_flush": group.timer.info["l2_flush"], "energy_source": ENERGY_SOURCE}
            for i, name in enumerate(group.names)}
