"""Timing on CPU callables (interleaving, budgets, errors) and statistics against numpy/scipy oracles."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.stats
import torch

from harness.measure.stats import bootstrap_ci, mann_whitney_u, ratio_ci, summarize
from harness.measure.timing import TimedFnError, TimingPolicy, time_interleaved, time_once_ms

FAST = dict(warmup_ms=0.0, min_samples=2, max_samples=12, budget_ms=1000.0)


def counter(log: list, name: str):
    def fn():
        log.append(name)
    return fn


# ---------------------------------------------------------------- timing


@pytest.mark.parametrize("bad", [dict(min_samples=0), dict(min_samples=5, max_samples=4), dict(rounds=0),
                                 dict(budget_ms=0.0), dict(warmup_ms=-1.0)])
def test_policy_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TimingPolicy(**bad)


def test_policy_to_dict_round_trips():
    policy = TimingPolicy(warmup_ms=5.0, rounds=7, cuda_graph=True)
    assert TimingPolicy(**policy.to_dict()) == policy


@pytest.mark.parametrize("n_fns,rounds", [(2, 4), (3, 3), (3, 5), (4, 2)])
def test_round_order_rotates(n_fns, rounds):
    names = [f"m{i}" for i in range(n_fns)]
    turns: list[tuple[str, int]] = []
    policy = TimingPolicy(**FAST, rounds=rounds)
    time_interleaved({n: (lambda: None) for n in names}, policy, "cpu",
                     progress=lambda name, r, count: turns.append((name, r)))
    for r in range(rounds):
        order = [name for name, rr in turns if rr == r]
        shift = r % n_fns
        assert order == names[shift:] + names[:shift]


@pytest.mark.parametrize("max_samples,rounds", [(12, 3), (10, 4), (7, 7), (1, 1)])
def test_max_samples_spread_over_rounds(max_samples, rounds):
    log: list[str] = []
    policy = TimingPolicy(warmup_ms=0.0, min_samples=1, max_samples=max_samples, budget_ms=1e6, rounds=rounds)
    result = time_interleaved({"a": counter(log, "a"), "b": counter(log, "b")}, policy, "cpu")
    for name in "ab":
        assert len(result[name]) == max_samples
        per_round = result.details[name]["samples_per_round"]
        assert sum(per_round) == max_samples and len(per_round) == rounds
        assert max(per_round) - min(per_round) <= int(np.ceil(max_samples / rounds))
        assert all(s >= 0 for s in result[name])
    # every timed call is a real call: warm-up calls plus samples
    assert log.count("a") == result.details["a"]["warmup_calls"] + max_samples


@pytest.mark.parametrize("budget_ms,rounds", [(30.0, 1), (40.0, 4)])
def test_budget_bounds_the_sample_count(budget_ms, rounds):
    sleep_ms = 2.0  # every call lasts at least this long, so the budget allows at most budget/sleep calls
    policy = TimingPolicy(warmup_ms=0.0, min_samples=1, max_samples=100_000, budget_ms=budget_ms, rounds=rounds)
    result = time_interleaved({"slow": lambda: time.sleep(sleep_ms / 1e3)}, policy, "cpu")
    assert 1 <= len(result["slow"]) <= budget_ms / sleep_ms + 1
    assert min(result["slow"]) >= sleep_ms


def test_min_samples_overrides_budget():
    policy = TimingPolicy(warmup_ms=0.0, min_samples=6, max_samples=50, budget_ms=1e-3, rounds=3)
    result = time_interleaved({"slow": lambda: time.sleep(0.001)}, policy, "cpu")
    assert len(result["slow"]) == 6
    assert result.details["slow"]["samples_per_round"] == [2, 2, 2]


def test_warmup_runs_before_sampling_and_at_least_once():
    log: list[str] = []
    policy = TimingPolicy(warmup_ms=0.0, min_samples=1, max_samples=3, budget_ms=1e6, rounds=1)
    result = time_interleaved({"a": counter(log, "a"), "b": counter(log, "b")}, policy, "cpu")
    assert result.details["a"]["warmup_calls"] >= 1
    # all warm-up calls of both precede the first sample: "a" warms, "b" warms, then rounds
    warm_a, warm_b = result.details["a"]["warmup_calls"], result.details["b"]["warmup_calls"]
    assert log[:warm_a + warm_b] == ["a"] * warm_a + ["b"] * warm_b


@pytest.mark.parametrize("fail_in", ["warmup", "sampling"])
def test_raising_fn_names_itself(fail_in):
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if fail_in == "warmup" or calls["n"] > 2:
            raise ZeroDivisionError("boom")

    policy = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5, budget_ms=1e6, rounds=1)
    with pytest.raises(TimedFnError, match="flaky_method: ZeroDivisionError: boom") as info:
        time_interleaved({"fine": lambda: None, "flaky_method": flaky}, policy, "cpu")
    assert info.value.name == "flaky_method"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_rejects_empty_and_unknown_device():
    with pytest.raises(ValueError, match="at least one"):
        time_interleaved({}, TimingPolicy(), "cpu")
    with pytest.raises(ValueError, match="meta"):
        time_interleaved({"a": lambda: None}, TimingPolicy(), "meta")


def test_cpu_details_say_no_flush_or_graph():
    result = time_interleaved({"a": lambda: None}, TimingPolicy(**FAST, rounds=2, cuda_graph=True), "cpu")
    assert result.details["a"]["timer"] == "perf_counter"
    assert result.details["a"]["mode"] == "eager" and result.details["a"]["l2_flush"] is False


def test_time_once_calls_once():
    log: list[str] = []
    ms = time_once_ms(lambda: (log.append("x"), time.sleep(0.002)), "cpu")
    assert log == ["x"] and ms >= 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("l2_flush,cuda_graph", [(True, False), (False, False), (True, True)])
def test_cuda_events_time_a_matmul(l2_flush, cuda_graph):
    a = torch.randn(1024, 1024, device="cuda")
    policy = TimingPolicy(warmup_ms=5.0, min_samples=5, max_samples=20, budget_ms=200.0, rounds=2,
                          l2_flush=l2_flush, cuda_graph=cuda_graph)
    result = time_interleaved({"mm": lambda: a @ a}, policy, "cuda")
    assert result.details["mm"]["timer"] == "cuda-events"
    assert result.details["mm"]["mode"] == ("cuda_graph" if cuda_graph else "eager")
    assert len(result["mm"]) >= 5 and all(s > 0 for s in result["mm"])


# ---------------------------------------------------------------- stats


def test_summarize_matches_numpy():
    rng = np.random.default_rng(1)
    samples = rng.lognormal(0.0, 0.3, size=301)
    s = summarize(samples.tolist())
    assert s["median_ms"] == pytest.approx(np.median(samples))
    assert s["mean_ms"] == pytest.approx(samples.mean())
    assert s["q1_ms"] == pytest.approx(np.percentile(samples, 25))
    assert s["iqr_ms"] == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert s["cv"] == pytest.approx(samples.std(ddof=1) / samples.mean())
    assert s["n_samples"] == 301
    lo, hi = s["ci95_ms"]
    assert lo <= s["median_ms"] <= hi
    assert s == summarize(samples)  # seeded: the same samples always give the same interval


def test_summarize_single_sample():
    s = summarize([3.0])
    assert s["median_ms"] == 3.0 and s["ci95_ms"] == [3.0, 3.0] and s["cv"] == 0.0


@pytest.mark.parametrize("bad,match", [([], "empty"), ([1.0, float("nan")], "NaN"), ([1.0, float("inf")], "NaN"),
                                       ([[1.0, 2.0]], "flat")])
@pytest.mark.parametrize("fn", [summarize, bootstrap_ci, lambda s: ratio_ci([1.0, 2.0], s),
                                lambda s: mann_whitney_u(s, [1.0])])
def test_bad_samples_raise(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad)


@pytest.mark.parametrize("level,n_boot", [(0.0, 100), (1.0, 100), (0.95, 0)])
def test_bad_bootstrap_parameters_raise(level, n_boot):
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=level, n_boot=n_boot)


@pytest.mark.parametrize("name,draw,true_median", [
    ("normal", lambda rng, n: rng.normal(5.0, 1.0, n), 5.0),
    ("lognormal", lambda rng, n: rng.lognormal(0.0, 0.5, n), 1.0),
    ("exponential", lambda rng, n: rng.exponential(2.0, n), 2.0 * np.log(2.0)),
])
def test_bootstrap_ci_covers_true_median(name, draw, true_median):
    covered = 0
    for seed in range(20):
        lo, hi = bootstrap_ci(draw(np.random.default_rng(seed), 2000), n_boot=500)
        covered += lo <= true_median <= hi
        assert hi - lo < 0.25 * true_median  # and the interval is tight for large samples
    assert covered >= 16  # nominal 95 %: 19 of 20 expected; 16 leaves room for bootstrap error


def test_bootstrap_ci_other_stat_and_level():
    samples = np.random.default_rng(3).normal(10.0, 2.0, 500)
    lo90, hi90 = bootstrap_ci(samples, stat=np.mean, level=0.90)
    lo99, hi99 = bootstrap_ci(samples, stat=np.mean, level=0.99)
    assert lo99 < lo90 < samples.mean() < hi90 < hi99


def test_ratio_ci_detects_ten_percent_slowdown():
    rng = np.random.default_rng(7)
    ref = rng.normal(1.0, 0.03, 200)
    cand = rng.normal(1.1, 0.03, 200)
    ratio, lo, hi = ratio_ci(ref, cand)
    assert ratio == pytest.approx(np.median(cand) / np.median(ref))
    assert 1.0 < lo <= ratio <= hi
    assert ratio == pytest.approx(1.1, rel=0.02)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_ratio_ci_identical_distributions_contain_one(seed):
    rng = np.random.default_rng(seed)
    ratio, lo, hi = ratio_ci(rng.normal(1.0, 0.05, 300), rng.normal(1.0, 0.05, 300))
    assert lo <= 1.0 <= hi


def test_ratio_ci_needs_positive_reference():
    with pytest.raises(ValueError, match="positive"):
        ratio_ci([0.0, 1.0], [1.0, 2.0])


@pytest.mark.parametrize("case", ["shifted", "same", "ties", "unequal_sizes", "tiny", "integer_heavy_ties"])
def test_mann_whitney_matches_scipy(case):
    rng = np.random.default_rng(5)
    a, b = {
        "shifted": (rng.normal(0, 1, 40), rng.normal(0.8, 1, 50)),
        "same": (rng.normal(0, 1, 60), rng.normal(0, 1, 60)),
        "ties": (np.round(rng.normal(0, 1, 30), 1), np.round(rng.normal(0.3, 1, 35), 1)),
        "unequal_sizes": (rng.exponential(1.0, 7), rng.exponential(2.0, 90)),
        "tiny": ([1.0, 2.0], [3.0]),
        "integer_heavy_ties": (rng.integers(0, 3, 25).astype(float), rng.integers(1, 4, 25).astype(float)),
    }[case]
    expected = scipy.stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert mann_whitney_u(a, b) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)
    assert mann_whitney_u(b, a) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)  # two-sided: symmetric


def test_mann_whitney_all_equal_is_one():
    assert mann_whitney_u([2.0, 2.0, 2.0], [2.0, 2.0]) == 1.0
