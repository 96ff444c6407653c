"""The order in which interleaved cases are called: balanced, randomized round orders, and energy segments.

A *round* calls every case of a problem group once (one call, or one block of calls). The orders of
successive rounds come from randomized Williams squares: a Williams square of ``n`` cases is a Latin
square (each case once in each position over ``n`` rounds) in which every case also directly follows
every other case equally often (``n`` rounds for even ``n``, ``2n`` for odd ``n``). Each square gets its
own random relabelling of the cases and a random order of its rows, so that the order changes every
round, no case keeps a slot, and the state a call inherits from its predecessor (clock, power, what is
left in L2 when flushing is off) is spread evenly over the cases. Over whole squares the position counts
are exactly equal; a partial last square adds at most one (even ``n``) or two (odd ``n``) to any count.

Energy cannot be split per case from rounds alone (every complete round holds the same calls, so the
counter read around it only gives their sum): `energy_weights` plans segments in which a random subset of
the cases is called twice per round, so that the cases' counts differ between segments and a least-squares
fit (`harness.measure.stats.split_energy`) separates them.

Pure Python and numpy, seeded: the same seed always gives the same orders.
"""

from __future__ import annotations

import numpy as np


def williams_square(n: int) -> list[list[int]]:
    """The rows of the standard Williams design for ``n`` cases (``n`` rows for even ``n``, ``2n`` for odd)."""
    if n < 1:
        raise ValueError(f"need at least one case, got {n}")
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(c + i) % n for c in first] for i in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def round_orders(n_cases: int, n_rounds: int, seed: int) -> list[list[int]]:
    """``n_rounds`` orders of the case indices ``0..n_cases-1``, from consecutive randomized Williams squares."""
    if n_rounds < 0:
        raise ValueError(f"n_rounds must be >= 0, got {n_rounds}")
    rng = np.random.default_rng(seed)
    square = williams_square(n_cases)
    orders: list[list[int]] = []
    while len(orders) < n_rounds:
        labels = rng.permutation(n_cases)
        for row in rng.permutation(len(square)):
            orders.append([int(labels[c]) for c in square[row]])
    return orders[:n_rounds]


def energy_weights(n_cases: int, n_segments: int, seed: int) -> np.ndarray:
    """``[n_segments, n_cases]`` calls per round of each case in each energy segment, 1 or 2: each case is
    doubled in half of the segments (balanced, random which), and the matrix has full column rank so the
    least-squares split is determined. Needs ``n_segments >= n_cases + 1``."""
    if n_segments < n_cases + 1:
        raise ValueError(f"need at least n_cases + 1 = {n_cases + 1} energy segments, got {n_segments}")
    rng = np.random.default_rng(seed)
    doubled = np.arange(n_segments) % 2 == 0
    while True:
        weights = 1 + np.stack([rng.permutation(doubled) for _ in range(n_cases)], axis=1).astype(int)
        if np.linalg.matrix_rank(weights) == n_cases:
            return weights
