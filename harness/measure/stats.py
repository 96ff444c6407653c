"""Statistics of timing samples: robust summaries, bootstrap intervals, and a rank test.

Timings are skewed (a floor set by the hardware, a tail from interference), so the headline is the
median with a bootstrap confidence interval; ratios of two methods are bootstrapped by resampling both
sample sets; `mann_whitney_u` says whether two sample sets differ at all. Everything is numpy only (scipy
is used by the tests as an oracle, not at run time) and seeded, so a results file always gives the same
numbers back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Stat = Callable[..., np.ndarray]  # a numpy reduction taking ``axis=``, e.g. np.median
_MAX_RESAMPLE_ELEMENTS = 4_000_000  # resample in row chunks so memory stays small for long sample lists


def _as_samples(samples: Sequence[float], what: str = "samples") -> np.ndarray:
    arr = np.asarray(samples, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"{what} contains {bad} NaN or infinite value(s)")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _resampled_stat(arr: np.ndarray, stat: Stat, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``stat`` of ``n_boot`` resamples (with replacement) of ``arr``."""
    rows_per_chunk = max(1, _MAX_RESAMPLE_ELEMENTS // arr.size)
    out = []
    for first in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - first)
        out.append(stat(arr[rng.integers(0, arr.size, size=(rows, arr.size))], axis=1))
    return np.concatenate(out)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(samples: Sequence[float], stat: Stat = np.median, level: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(lo, hi)`` of ``stat`` (a numpy reduction)."""
    arr = _as_samples(samples)
    _check_level(level, n_boot)
    return _percentile_interval(_resampled_stat(arr, stat, n_boot, np.random.default_rng(seed)), level)


def ratio_ci(ref: Sequence[float], cand: Sequence[float], level: float = 0.95, n_boot: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: median(cand) / median(ref) and its bootstrap interval (both sets resampled
    independently). A ratio above 1 means the candidate takes longer."""
    ref_arr, cand_arr = _as_samples(ref, "reference samples"), _as_samples(cand, "candidate samples")
    _check_level(level, n_boot)
    if np.any(ref_arr <= 0):
        raise ValueError("reference samples must all be positive to divide by their median")
    rng = np.random.default_rng(seed)
    ratios = _resampled_stat(cand_arr, np.median, n_boot, rng) / _resampled_stat(ref_arr, np.median, n_boot, rng)
    lo, hi = _percentile_interval(ratios, level)
    return float(np.median(cand_arr) / np.median(ref_arr)), lo, hi


def summarize(samples: Sequence[float]) -> dict:
    """Median, mean, quartiles, IQR, 95 % bootstrap interval of the median, count and coefficient of
    variation (sample standard deviation / mean; 0 for a single sample)."""
    arr = _as_samples(samples)
    q1, median, q3 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
    mean = float(arr.mean())
    cv = float(arr.std(ddof=1) / mean) if arr.size > 1 and mean != 0 else 0.0
    return {"median_ms": median, "mean_ms": mean, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "ci95_ms": list(bootstrap_ci(arr)), "n_samples": int(arr.size), "cv": cv}


def _average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n with ties given their average rank, and the size of every group of equal values."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    counts = np.diff(bounds)
    group_rank = bounds[:-1] + (counts + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(group_rank, counts)
    return ranks, counts


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test: normal approximation with tie correction and
    continuity correction (as ``scipy.stats.mannwhitneyu(..., method="asymptotic")``). All values equal
    gives 1.0."""
    a_arr, b_arr = _as_samples(a, "first sample set"), _as_samples(b, "second sample set")
    n1, n2 = a_arr.size, b_arr.size
    n = n1 + n2
    ranks, tie_counts = _average_ranks(np.concatenate([a_arr, b_arr]))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    tie_term = float((tie_counts**3 - tie_counts).sum())
    variance = n1 * n2 / 12.0 * ((n + 1) - (tie_term / (n * (n - 1)) if n > 1 else 0.0))
    if variance <= 0:
        return 1.0
    z = (abs(u1 - n1 * n2 / 2.0) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(z / math.sqrt(2.0)))
