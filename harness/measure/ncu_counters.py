"""SM counters of one call, gathered in the same ncu pass as its traffic bytes (`harness.measure.traffic`):
tensor-pipe utilisation, achieved occupancy, SM throughput and the warp stall reasons. They say why a kernel
falls short of the tensor cores' peak (issue #14: HilbertA's Triton kernel next to FA4).

Every metric here is a hardware counter read during kernel replay (no PC-sampling pass):

- tensor pipe: ``sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active``, the cycles the MMA unit
  was busy with any tensor instruction (warp-level HMMA, Hopper's warp-group GMMA/wgmma, Blackwell's tcgen05),
  in % of its peak over the cycles the SM was active. The sub-pipes ``sm__pipe_tensor_op_hmma_cycles_active``
  and ``sm__pipe_tensor_op_gmma_cycles_active`` are asked for as well where ncu lists them. When the all-tensor
  metric is missing the headline falls back to the larger sub-pipe, never their sum: on some chips the hmma
  sub-pipe counts the wgmma work as well;
- achieved occupancy: ``sm__warps_active.avg.pct_of_peak_sustained_active`` (active warps / warp slots);
- SM throughput: ``sm__throughput.avg.pct_of_peak_sustained_elapsed`` (ncu's "Compute (SM) Throughput", the
  busiest SM unit in % of its peak over the elapsed time);
- stalls: ``smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio``, the cycles a warp spends
  stalled for <reason> per instruction it issues (ncu's Warp State Statistics). Their total, including
  ``selected`` (the issue cycle itself, 1 by definition), is ``smsp__average_warps_active_per_issue_active.ratio``:
  the warp cycles per issued instruction. Reasons left out of `STALL_REASONS` show up as
  ``stall_other_cycles_per_issue``.

A call may launch several kernels: each value is the mean over them weighted by kernel duration under ncu
(`weighted_counters`), and None if any kernel lacks it (never a partial mean). Not every ncu knows every
name: the caller reads ``ncu --query-metrics`` once (`parse_metric_listing`) and `choose_metrics` asks only
for listed ones, never for one ncu refused before; `unknown_metric` recognises ncu's "Failed to find metric" so
the caller can retry with the byte metrics alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

DURATION_METRIC = "gpu__time_duration.sum"
TENSOR_ALL = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
TENSOR_HMMA = "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"
TENSOR_GMMA = "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active"
CPI_METRIC = "smsp__average_warps_active_per_issue_active.ratio"
# ncu metric -> key of its duration-weighted mean in the result: percentages 0-100, ratios in cycles/instruction
# (TENSOR_ALL is the headline ``tensor_pipe_pct``, with the sub-pipes as its fallback: `_tensor_pipe`)
UTILISATION_METRICS = {
    TENSOR_HMMA: "tensor_hmma_pct",
    TENSOR_GMMA: "tensor_gmma_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_throughput_pct",
    CPI_METRIC: "warp_cycles_per_issue",
}
# The stall reasons asked for: the ones an attention kernel meets (memory and shared-memory waits, barriers
# and mbarrier sleeps, fixed-latency and math-pipe waits, issue contention); rarer ones land in "other".
STALL_REASONS = ("long_scoreboard", "short_scoreboard", "barrier", "membar", "sleeping", "wait",
                 "math_pipe_throttle", "mio_throttle", "lg_throttle", "dispatch_stall", "no_instruction",
                 "branch_resolving", "not_selected", "selected")
ISSUING = "selected"  # the issue cycle itself: part of the total, never a stall to rank
TOP_STALLS = 3


def stall_metric(reason: str) -> str:
    return f"smsp__average_warps_issue_stalled_{reason}_per_issue_active.ratio"


STALL_METRICS = {stall_metric(reason): reason for reason in STALL_REASONS}
COUNTER_METRICS = (TENSOR_ALL, *UTILISATION_METRICS, *STALL_METRICS)
# units ncu prints for these dimensionless metrics with --print-units base (a ratio may print none)
DIMENSIONLESS_UNITS = frozenset({"%", "", "ratio", "cycle", "cycles", "warp", "warps", "inst", "instruction"})
COUNTERS_NOTE = ("mean over the call's kernels weighted by kernel duration under ncu; *_pct in % (0-100) of the "
                 "peak sustained rate, stalls in warp cycles per issued instruction")
METRIC_LINE = re.compile(r"^\s*([a-z0-9]+__[A-Za-z0-9_]+)\b")
UNKNOWN_METRIC = re.compile(r"Failed to find metric\s+(?:regex:)?\^?([A-Za-z0-9_]+)", re.IGNORECASE)


def base_name(metric: str) -> str:
    """``sm__throughput.avg.pct_of_peak_sustained_elapsed`` -> ``sm__throughput`` (what --query-metrics lists)."""
    return metric.split(".", 1)[0]


def counter_value(text: str, unit: str) -> float | None:
    """A percentage or ratio as printed by ncu; ``n/a``, an empty cell or a unit that is not dimensionless
    is None (an optional counter never stops the byte counts)."""
    text = text.replace(",", "").strip()
    if text in ("", "n/a") or unit.strip() not in DIMENSIONLESS_UNITS:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_metric_listing(text: str) -> frozenset[str]:
    """The base metric names in ``ncu --query-metrics`` output (one per line, first column)."""
    return frozenset(match.group(1) for line in text.splitlines() if (match := METRIC_LINE.match(line)))


def choose_metrics(required: Sequence[str], listed: frozenset[str] | None,
                   refused: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(metrics to ask for, counters skipped). The required (byte and duration) metrics are always asked for;
    a counter is skipped when a listing exists and lacks it, or when ncu refused its name before (``refused``:
    names as `unknown_metric` gives them, base names or full)."""
    refused = set(refused)
    skipped = [metric for metric in COUNTER_METRICS
               if (listed is not None and base_name(metric) not in listed) or {metric, base_name(metric)} & refused]
    return [*required, *(metric for metric in COUNTER_METRICS if metric not in skipped)], skipped


def unknown_metric(output: str) -> str | None:
    """The metric ncu refused as unknown ("==ERROR== Failed to find metric ..."), or None."""
    match = UNKNOWN_METRIC.search(output)
    if match:
        return match.group(1)
    for line in output.splitlines():
        if line.startswith("==ERROR==") and "metric" in line.lower() and "ERR_NVGPUCTR" not in line:
            return line.removeprefix("==ERROR==").strip()
    return None


def _weighted(launches: Sequence[dict], metric: str) -> float | None:
    """Duration-weighted mean of ``metric`` over the launches; None if any launch lacks it or its duration."""
    pairs = [(launch["metrics"].get(metric), launch["metrics"].get(DURATION_METRIC)) for launch in launches]
    if not pairs or any(value is None or ns is None for value, ns in pairs):
        return None
    total_ns = sum(ns for _, ns in pairs)
    return sum(value * ns for value, ns in pairs) / total_ns if total_ns > 0 else None


def top_stalls(stalls: dict[str, float | None], n: int = TOP_STALLS) -> list[dict]:
    """The ``n`` largest stall reasons (``selected`` is issuing, not a stall), largest first, ties by name."""
    ranked = sorted(((-value, reason) for reason, value in stalls.items() if value is not None and reason != ISSUING))
    return [{"reason": reason, "cycles_per_issue": -negative} for negative, reason in ranked[:n]]


def _tensor_pipe(means: dict[str, float | None]) -> tuple[float | None, str | None]:
    """The all-tensor pipe %, else the larger of the sub-pipes (with the metric it came from)."""
    if means[TENSOR_ALL] is not None:
        return means[TENSOR_ALL], TENSOR_ALL
    subpipes = [(means[metric], metric) for metric in (TENSOR_GMMA, TENSOR_HMMA) if means[metric] is not None]
    return max(subpipes) if subpipes else (None, None)


def weighted_counters(launches: Sequence[dict]) -> dict:
    """The counters of one call: each a duration-weighted mean over its launches (`COUNTERS_NOTE`)."""
    means = {metric: _weighted(launches, metric) for metric in COUNTER_METRICS}
    tensor, tensor_metric = _tensor_pipe(means)
    stalls = {reason: means[metric] for metric, reason in STALL_METRICS.items()}
    total = means[CPI_METRIC]
    other = None if total is None or None in stalls.values() else total - sum(stalls.values())
    return {
        "tensor_pipe_pct": tensor,
        "tensor_pipe_metric": tensor_metric,
        **{key: means[metric] for metric, key in UTILISATION_METRICS.items()},
        "stall_cycles_per_issue": stalls,
        "stall_other_cycles_per_issue": other,
        "top_stalls": top_stalls(stalls),
        "counters_note": COUNTERS_NOTE,
    }


def empty_counters(reason: str, skipped: Iterable[str] = ()) -> dict:
    """The counter keys, all None, with why (the byte counts came from a run without the counters)."""
    result = weighted_counters([])
    return {**result, "counters_reason": reason, "counters_skipped": list(skipped)}
