"""Statistics of timing samples: robust summaries, bootstrap intervals over samples and over rounds, a rank
test, the A/A agreement check and the least-squares energy split.

Timings are skewed (a floor set by the hardware, a tail from interference), so the headline is the
median with a bootstrap confidence interval. Samples taken in interleaved rounds
(`harness.measure.timing.time_interleaved`) are not independent: clocks drift over seconds, so
neighbouring rounds share their conditions and resampling single samples gives intervals far narrower
than the spread between runs. `block_bootstrap_ci` therefore resamples whole rounds, in circular blocks
of consecutive rounds (the block length from the series' own autocorrelation, Politis & White 2004 with
the 2009 correction), and the statistic is the median of the case's per-round times; ratios use
per-round ratios against an anchor timed in the same rounds, so the drift they share cancels.
`mann_whitney_u` says whether two sample sets differ at all. Everything is numpy only (scipy is used by
the tests as an oracle, not at run time) and seeded, so a results file always gives the same numbers back.
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


def summarize(samples: Sequence[float], rounds: Sequence[int] | None = None) -> dict:
    """Median, mean, quartiles, IQR, 95 % interval of the median, count and coefficient of variation
    (sample standard deviation / mean; 0 for a single sample). With ``rounds`` (the round of each sample)
    the interval is the block bootstrap over rounds (`round_ci`) and ``ci_method`` says so; without, it
    resamples single samples (``bootstrap-samples``)."""
    arr = _as_samples(samples)
    q1, median, q3 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
    mean = float(arr.mean())
    cv = float(arr.std(ddof=1) / mean) if arr.size > 1 and mean != 0 else 0.0
    ci, method = ((round_ci(arr, rounds), "block-bootstrap-rounds") if rounds is not None
                  else (bootstrap_ci(arr), "bootstrap-samples"))
    return {"median_ms": median, "mean_ms": mean, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "ci95_ms": list(ci), "ci_method": method, "n_samples": int(arr.size), "cv": cv}


# ---------------------------------------------------------------- rounds


def per_round(samples: Sequence[float], rounds: Sequence[int]) -> dict[int, float]:
    """``{round: median of that round's samples}``, in round order (one sample per round with single calls)."""
    arr = _as_samples(samples)
    idx = np.asarray(rounds)
    if idx.shape != arr.shape:
        raise ValueError(f"rounds must give one round per sample: {idx.shape} rounds for {arr.shape} samples")
    return {int(r): float(np.median(arr[idx == r])) for r in np.unique(idx)}


def _paired(samples: Sequence[float], rounds: Sequence[int], other: Sequence[float],
            other_rounds: Sequence[int]) -> np.ndarray:
    """``[n_rounds, 2]`` per-round times of the two sample sets, over the rounds that both have."""
    a, b = per_round(samples, rounds), per_round(other, other_rounds)
    common = sorted(a.keys() & b.keys())
    if not common:
        raise ValueError("the two sample sets share no round")
    return np.array([[a[r], b[r]] for r in common])


def block_length(series: Sequence[float]) -> int:
    """Block length for the circular block bootstrap of ``series`` (Politis & White 2004, corrected by
    Patton, Politis & White 2009): long where neighbouring values are correlated, 1 for white noise."""
    x = np.asarray(series, dtype=float)
    n = x.size
    if n < 4 or np.ptp(x) == 0:
        return 1
    x = x - x.mean()
    max_lag = min(n - 1, math.ceil(math.sqrt(n)) + max(5, math.ceil(math.log10(n))))
    acov = np.array([x[: n - k] @ x[k:] / n for k in range(max_lag + 1)])
    rho = acov / acov[0]
    kn, threshold = max(5, math.ceil(math.log10(n))), 2.0 * math.sqrt(math.log10(n) / n)
    m_hat = next((m for m in range(max_lag - kn + 1) if np.all(np.abs(rho[m + 1:m + 1 + kn]) < threshold)),
                 max_lag)
    big_m = min(2 * max(m_hat, 1), max_lag)
    lags = np.arange(-big_m, big_m + 1)
    t = np.abs(lags) / big_m
    weight = np.where(t <= 0.5, 1.0, 2.0 * (1.0 - t))  # flat-top kernel
    r = acov[np.abs(lags)]
    g, spectrum0 = float(np.sum(weight * np.abs(lags) * r)), float(np.sum(weight * r))
    if spectrum0 <= 0 or g == 0:
        return 1
    b = (2.0 * g**2 / (4.0 / 3.0 * spectrum0**2)) ** (1 / 3) * n ** (1 / 3)
    return int(min(max(1, math.ceil(b)), math.ceil(min(3 * math.sqrt(n), n / 3))))


def _block_resampled(arr: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n_boot: int,
                     rng: np.random.Generator, block: int | None) -> np.ndarray:
    """``stat`` of ``n_boot`` circular-block resamples of the rows of ``arr``."""
    n = arr.shape[0]
    if block is None:
        block = max(block_length(col) for col in arr.reshape(n, -1).T)
    n_blocks = math.ceil(n / block)
    rows_per_chunk = max(1, _MAX_RESAMPLE_ELEMENTS // arr.size)
    out = []
    for first in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - first)
        starts = rng.integers(0, n, size=(rows, n_blocks, 1))
        index = ((starts + np.arange(block)) % n).reshape(rows, -1)[:, :n]
        out.append(stat(arr[index]))
    return np.concatenate(out)


def block_bootstrap_ci(series: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], level: float = 0.95,
                       n_boot: int = 2000, seed: int = 0, block: int | None = None) -> tuple[float, float]:
    """Percentile interval of ``stat`` over circular-block resamples of the rows (rounds) of ``series``
    (``[n_rounds]`` or ``[n_rounds, k]``; ``stat`` maps ``[rows, n_rounds, ...]`` to ``[rows]``). The block
    length is the longest `block_length` of the columns unless given."""
    arr = np.asarray(series, dtype=float)
    _check_level(level, n_boot)
    return _percentile_interval(_block_resampled(arr, stat, n_boot, np.random.default_rng(seed), block), level)


def runs_ratio_ci(ref_series: Sequence[float], cand_series: Sequence[float], level: float = 0.95,
                  n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: median(cand) / median(ref) of two per-round series from two independent runs
    (`per_round` times, or `anchored_ratios` for the gate's ratio mode), each run block-resampled on its own."""
    ref, cand = _as_samples(ref_series, "reference series"), _as_samples(cand_series, "candidate series")
    _check_level(level, n_boot)
    if np.any(ref <= 0):
        raise ValueError("reference series must be positive to divide by its median")
    rng = np.random.default_rng(seed)
    ratios = (_block_resampled(cand, _median_rows, n_boot, rng, None)
              / _block_resampled(ref, _median_rows, n_boot, rng, None))
    lo, hi = _percentile_interval(ratios, level)
    return float(np.median(cand) / np.median(ref)), lo, hi


def _median_rows(resampled: np.ndarray) -> np.ndarray:
    return np.median(resampled, axis=1)


def round_ci(samples: Sequence[float], rounds: Sequence[int], level: float = 0.95, n_boot: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """Block-bootstrap interval of the median of the per-round times."""
    return block_bootstrap_ci(np.array(list(per_round(samples, rounds).values())), _median_rows, level, n_boot, seed)


def anchored_ratios(samples: Sequence[float], rounds: Sequence[int], anchor: Sequence[float],
                    anchor_rounds: Sequence[int]) -> np.ndarray:
    """Per-round time of the case / time of the anchor in the same round, over the rounds both have."""
    pairs = _paired(anchor, anchor_rounds, samples, rounds)
    if np.any(pairs[:, 0] <= 0):
        raise ValueError("anchor samples must all be positive to divide by them")
    return pairs[:, 1] / pairs[:, 0]


def anchored_ratio_ci(samples: Sequence[float], rounds: Sequence[int], anchor: Sequence[float],
                      anchor_rounds: Sequence[int], level: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: the median of the per-round ratios case / anchor, with its block-bootstrap
    interval (the gate's ratio mode: drift shared by case and anchor cancels round by round)."""
    ratios = anchored_ratios(samples, rounds, anchor, anchor_rounds)
    lo, hi = block_bootstrap_ci(ratios, _median_rows, level, n_boot, seed)
    return float(np.median(ratios)), lo, hi


def _ratio_of_medians(resampled: np.ndarray) -> np.ndarray:
    return np.median(resampled[..., 1], axis=1) / np.median(resampled[..., 0], axis=1)


def aa_compare(a: Sequence[float], a_rounds: Sequence[int], b: Sequence[float], b_rounds: Sequence[int],
               limit_pct: float, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """An A/A control: the same method timed twice under two names in the same rounds. ``ratio`` is
    median(b) / median(a) over their common rounds, ``ci95`` its block-bootstrap interval (both resampled
    with the same rounds). They ``agree`` when the whole interval lies within ``limit_pct`` of 1, i.e.
    the run can resolve a difference of that size and finds none; a run where they do not is unusable."""
    if limit_pct <= 0:
        raise ValueError(f"limit_pct must be positive, got {limit_pct}")
    pairs = _paired(a, a_rounds, b, b_rounds)
    ratio = float(_ratio_of_medians(pairs[None])[0])
    lo, hi = block_bootstrap_ci(pairs, _ratio_of_medians, level, n_boot, seed)
    limit = limit_pct / 100.0
    return {"ratio": ratio, "ci95": [lo, hi], "limit_pct": limit_pct,
            "agree": bool(lo >= 1.0 - limit and hi <= 1.0 + limit)}


def split_energy(calls: np.ndarray, energy_j: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Joules per call of each case from segment totals: ``energy_j[k] = sum_c calls[k, c] * e[c]``,
    solved by least squares. Returns ``(e, standard error of e)`` (NaN errors without spare segments)."""
    x, y = np.asarray(calls, dtype=float), np.asarray(energy_j, dtype=float)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need calls [segments, cases] and one energy per segment, got {x.shape} and {y.shape}")
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ValueError("the segments' call counts do not separate the cases (rank-deficient)")
    e, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = x.shape[0] - x.shape[1]
    if dof == 0:
        return e, np.full(e.shape, np.nan)
    sigma2 = float(np.sum((y - x @ e) ** 2)) / dof
    return e, np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x)))


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
