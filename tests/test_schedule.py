"""The interleaved schedule's round orders (randomized, balanced, seeded) and the energy segment plan."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from harness.measure.schedule import energy_weights, round_orders, williams_square


def position_counts(orders: list[list[int]], n: int) -> np.ndarray:
    counts = np.zeros((n, n), dtype=int)  # [case, position]
    for order in orders:
        for position, case in enumerate(order):
            counts[case, position] += 1
    return counts


def follower_counts(orders: list[list[int]]) -> Counter:
    return Counter((a, b) for order in orders for a, b in zip(order, order[1:]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9])
def test_williams_square_is_latin_and_carryover_balanced(n):
    rows = williams_square(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    copies = len(rows) // n
    assert (position_counts(rows, n) == copies).all()
    pairs = follower_counts(rows)  # every case directly after every other the same number of times
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1


@pytest.mark.parametrize("n,rounds", [(2, 10), (3, 31), (4, 40), (7, 100), (12, 200)])
def test_round_orders_randomized_and_balanced(n, rounds):
    orders = round_orders(n, rounds, seed=3)
    assert len(orders) == rounds
    assert all(sorted(order) == list(range(n)) for order in orders)  # each case once per round
    counts = position_counts(orders, n)
    slack = 1 if n % 2 == 0 else 2  # exact over whole squares; a partial last square adds at most this
    assert counts.max() - counts.min() <= slack
    changed = sum(a != b for a, b in zip(orders, orders[1:]))
    if n >= 3:
        assert changed >= 0.8 * (rounds - 1)  # a fresh order (nearly) every round
        assert len({tuple(o) for o in orders}) >= min(rounds, len(williams_square(n))) // 2
    # no case keeps the first slot: each gets it about equally often
    assert counts[:, 0].max() - counts[:, 0].min() <= slack


@pytest.mark.parametrize("n", [3, 6])
def test_round_orders_are_seeded_and_squares_differ(n):
    assert round_orders(n, 50, seed=1) == round_orders(n, 50, seed=1)
    assert round_orders(n, 50, seed=1) != round_orders(n, 50, seed=2)
    square = len(williams_square(n))
    orders = round_orders(n, 4 * square, seed=0)
    squares = {tuple(map(tuple, orders[i:i + square])) for i in range(0, len(orders), square)}
    assert len(squares) == 4  # each square relabelled and reordered afresh, not one pattern repeated


def test_round_orders_edge_cases():
    assert round_orders(1, 3, seed=0) == [[0], [0], [0]]
    assert round_orders(4, 0, seed=0) == []
    with pytest.raises(ValueError, match="n_rounds"):
        round_orders(3, -1, seed=0)
    with pytest.raises(ValueError, match="at least one case"):
        round_orders(0, 3, seed=0)


@pytest.mark.parametrize("n_cases,n_segments", [(1, 2), (3, 8), (10, 20), (10, 11)])
def test_energy_weights_separate_the_cases(n_cases, n_segments):
    weights = energy_weights(n_cases, n_segments, seed=4)
    assert weights.shape == (n_segments, n_cases)
    assert set(np.unique(weights)) <= {1, 2}
    assert np.linalg.matrix_rank(weights) == n_cases
    doubled = (weights == 2).sum(axis=0)  # each case doubled in half of the segments
    assert (doubled == (n_segments + 1) // 2).all()
    assert (energy_weights(n_cases, n_segments, seed=4) == weights).all()


def test_energy_weights_need_enough_segments():
    with pytest.raises(ValueError, match="at least n_cases"):
        energy_weights(5, 5, seed=0)
