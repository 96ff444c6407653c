"""Timing on CPU callables (interleaving, budgets, errors) and statistics against numpy/scipy oracles."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.stats
import torch

from harness.measure import stats
from harness.measure.stats import bootstrap_ci, mann_whitney_u, ratio_ci, summarize
from harness.measure.schedule import round_orders
from harness.measure.timing import TimedFnError, TimingPolicy, time_interleaved, time_once_ms

FAST = dict(warmup_ms=0.0, min_samples=2, max_samples=12, budget_ms=1000.0)


def counter(log: list, name: str):
    def fn():
        log.append(name)
    return fn


# ---------------------------------------------------------------- timing


@pytest.mark.parametrize("bad", [dict(min_samples=0), dict(min_samples=5, max_samples=4), dict(rounds=0),
                                 dict(budget_ms=0.0), dict(warmup_ms=-1.0), dict(block=0)])
def test_policy_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TimingPolicy(**bad)


def test_policy_to_dict_round_trips():
    policy = TimingPolicy(warmup_ms=5.0, rounds=7, cuda_graph=True, block=2, seed=9)
    assert TimingPolicy(**policy.to_dict()) == policy


def sampled_log(fns_names: list[str], policy: TimingPolicy):
    """Time counting callables; the result and the names called after the warm-up, in call order."""
    log: list[str] = []
    result = time_interleaved({n: counter(log, n) for n in fns_names}, policy, "cpu")
    warm = sum(result.details[n]["warmup_calls"] for n in fns_names)
    return result, log[warm:]


@pytest.mark.parametrize("n_fns,block,seed", [(1, 1, 0), (3, 1, 0), (4, 1, 5), (3, 2, 1), (5, 3, 2)])
def test_calls_follow_the_recorded_orders(n_fns, block, seed):
    names = [f"m{i}" for i in range(n_fns)]
    policy = TimingPolicy(warmup_ms=0.0, min_samples=6, max_samples=12, budget_ms=1e6, rounds=2, block=block, seed=seed)
    result, calls = sampled_log(names, policy)
    expected = [names[i] for order in result.orders for i in order for _ in range(block)]
    assert calls == expected  # what ran is what was recorded, single calls (or blocks) interleaved
    assert result.orders == round_orders(n_fns, len(result.orders), seed)
    assert result.schedule["rounds"] == len(result.orders) and result.schedule["seed"] == seed
    for i, name in enumerate(names):
        # the k-th call of a case in round r carries round r, and rounds are whole
        assert result.rounds[name] == [r for r in range(len(result.orders)) for _ in range(block)]
        assert len(result[name]) == len(result.orders) * block
    kind = result.schedule["kind"]
    assert (kind == "interleaved-single-call") == (block == 1)


def test_start_times_are_in_call_order_and_windows_do_not_overlap():
    names = ["a", "b", "c"]
    fns = {n: (lambda: time.sleep(0.0005)) for n in names}
    result = time_interleaved(fns, TimingPolicy(warmup_ms=0.0, min_samples=8, max_samples=8, budget_ms=1e6), "cpu")
    spans = sorted((start, end, name) for name in names for start, end in result.windows(name))
    assert min(t for n in names for t in result.t_s[n]) == 0.0  # relative to the first round's start
    for (s0, e0, _), (s1, _, _) in zip(spans, spans[1:]):
        assert s0 < e0 <= s1  # one call at a time; each window lasts its sample
    for r, order in enumerate(result.orders):  # by start time, a round's calls run in its recorded order
        in_round = sorted((result.t_s[n][result.rounds[n].index(r)], n) for n in names)
        assert [n for _, n in in_round] == [names[i] for i in order]
    for name in names:
        assert all(e - s == pytest.approx(ms / 1e3) for (s, e), ms in zip(result.windows(name), result[name]))


@pytest.mark.parametrize("max_samples,min_samples,rounds,block,expected_rounds", [
    (12, 1, 3, 1, 12), (10, 1, 4, 3, 4), (7, 7, 7, 1, 7), (1, 1, 1, 1, 1), (4, 2, 6, 1, 6)])
def test_round_count(max_samples, min_samples, rounds, block, expected_rounds):
    policy = TimingPolicy(warmup_ms=0.0, min_samples=min_samples, max_samples=max_samples, budget_ms=1e6,
                          rounds=rounds, block=block)
    result, calls = sampled_log(["a", "b"], policy)
    assert policy.round_range()[1] == expected_rounds  # the `rounds` floor wins over max_samples
    assert result.schedule["rounds"] == expected_rounds
    assert len(result["a"]) == len(result["b"]) == expected_rounds * block
    assert calls.count("a") == expected_rounds * block and all(s >= 0 for s in result["a"])


@pytest.mark.parametrize("budget_ms,n_fns", [(30.0, 1), (20.0, 2)])
def test_budget_bounds_the_sample_count(budget_ms, n_fns):
    sleep_ms = 2.0  # every call lasts at least this long, so the group budget allows at most budget/sleep rounds
    policy = TimingPolicy(warmup_ms=0.0, min_samples=1, max_samples=100_000, budget_ms=budget_ms, rounds=1)
    result = time_interleaved({f"s{i}": lambda: time.sleep(sleep_ms / 1e3) for i in range(n_fns)}, policy, "cpu")
    assert 1 <= len(result["s0"]) <= budget_ms / sleep_ms + 1
    assert min(result["s0"]) >= sleep_ms


def test_min_samples_overrides_budget():
    policy = TimingPolicy(warmup_ms=0.0, min_samples=6, max_samples=50, budget_ms=1e-3, rounds=3)
    result = time_interleaved({"slow": lambda: time.sleep(0.001)}, policy, "cpu")
    assert len(result["slow"]) == 6 and result.rounds["slow"] == list(range(6))


def test_warmup_runs_whole_rounds_before_sampling():
    log: list[str] = []
    policy = TimingPolicy(warmup_ms=2.0, min_samples=1, max_samples=3, budget_ms=1e6, rounds=1)
    result = time_interleaved({"a": counter(log, "a"), "b": counter(log, "b")}, policy, "cpu")
    warm = result.details["a"]["warmup_calls"]
    assert warm >= 1 and result.details["b"]["warmup_calls"] == warm == result.schedule["warmup_rounds"]
    for r in range(warm):  # every warm-up round calls each callable once, before any sample
        assert sorted(log[2 * r:2 * r + 2]) == ["a", "b"]
    assert len(log) == 2 * warm + 2 * len(result["a"])


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


# ---------------------------------------------------------------- rounds: block bootstrap, ratios, A/A


def drifting_run(seed: int, n: int = 400, phi: float = 0.9, drift_sd: float = 0.02, noise_sd: float = 0.005):
    """Per-round times of one run: 1.0 ms times a slow AR(1) clock drift, plus white noise per call."""
    rng = np.random.default_rng(seed)
    drift = np.empty(n)
    drift[0] = rng.normal(0.0, drift_sd)
    for i in range(1, n):
        drift[i] = phi * drift[i - 1] + rng.normal(0.0, drift_sd * np.sqrt(1 - phi**2))
    return 1.0 + drift, rng.normal(0.0, noise_sd, n)


def test_block_bootstrap_covers_between_run_spread_where_pooled_does_not():
    runs = [sum(drifting_run(seed)) for seed in range(60)]
    rounds = np.arange(len(runs[0]))
    block = [stats.round_ci(run, rounds, n_boot=400) for run in runs]
    pooled = [bootstrap_ci(run, n_boot=400) for run in runs]
    coverage = {name: np.mean([lo <= 1.0 <= hi for lo, hi in cis])  # the true median is 1.0
                for name, cis in (("block", block), ("pooled", pooled))}
    assert coverage["block"] >= 0.8 and coverage["pooled"] <= 0.6
    true_width = 2 * 1.96 * np.std([np.median(run) for run in runs])  # the spread between runs
    block_width = np.median([hi - lo for lo, hi in block])
    assert 0.6 * true_width < block_width < 1.6 * true_width
    assert np.median([hi - lo for lo, hi in pooled]) < 0.5 * true_width


@pytest.mark.parametrize("n", [50, 400])
def test_block_length_short_for_white_noise_long_for_drift(n):
    white = np.random.default_rng(n).normal(size=n)
    drift, noise = drifting_run(n, n=n, phi=0.95)
    assert stats.block_length(white) <= 3
    assert stats.block_length(drift + noise) >= 5
    assert stats.block_length(np.ones(n)) == 1


def test_per_round_medians_and_summary_with_rounds():
    samples, rounds = [1.0, 3.0, 2.0, 10.0, 4.0, 6.0], [0, 0, 1, 1, 2, 2]
    assert stats.per_round(samples, rounds) == {0: 2.0, 1: 6.0, 2: 5.0}
    with pytest.raises(ValueError, match="one round per sample"):
        stats.per_round(samples, rounds[:-1])
    drift, noise = drifting_run(3)
    with_rounds = summarize(drift + noise, rounds=np.arange(drift.size))
    without = summarize(drift + noise)
    assert with_rounds["ci_method"] == "block-bootstrap-rounds" and without["ci_method"] == "bootstrap-samples"
    widths = [s["ci95_ms"][1] - s["ci95_ms"][0] for s in (with_rounds, without)]
    assert widths[0] > 2 * widths[1]  # the drift is in the interval only when rounds are used
    assert with_rounds["median_ms"] == without["median_ms"]


def test_anchored_ratio_cancels_shared_drift():
    drift, noise = drifting_run(4)
    rng = np.random.default_rng(4)
    anchor = 2.0 * drift + rng.normal(0, 0.002, drift.size)
    case = 1.1 * 2.0 * drift + rng.normal(0, 0.002, drift.size)  # 10 % slower than the anchor, same drift
    rounds = np.arange(drift.size)
    ratio, lo, hi = stats.anchored_ratio_ci(case, rounds, anchor, rounds)
    assert lo <= 1.1 <= hi and hi - lo < 0.005
    abs_lo, abs_hi = stats.round_ci(case, rounds)
    assert (abs_hi - abs_lo) / np.median(case) > 3 * (hi - lo) / ratio  # absolute times carry the drift
    # only rounds present in both count; an anchor with a missing round drops it
    assert stats.anchored_ratios([2.0, 4.0], [0, 1], [1.0], [1]).tolist() == [4.0]
    with pytest.raises(ValueError, match="no round"):
        stats.anchored_ratios([2.0], [0], [1.0], [1])


@pytest.mark.parametrize("slowdown,agree", [(1.0, True), (1.03, False), (0.97, False)])
def test_aa_compare(slowdown, agree):
    drift, _ = drifting_run(5)
    rng = np.random.default_rng(5)
    a = drift + rng.normal(0, 0.01, drift.size)
    b = slowdown * drift + rng.normal(0, 0.01, drift.size)
    rounds = np.arange(drift.size)
    result = stats.aa_compare(a, rounds, b, rounds, limit_pct=1.5)
    assert result["agree"] is agree and result["limit_pct"] == 1.5
    assert result["ci95"][0] <= result["ratio"] <= result["ci95"][1]
    assert result["ratio"] == pytest.approx(slowdown, abs=0.01)


def test_aa_compare_noisy_pair_cannot_agree():
    rng = np.random.default_rng(6)
    rounds = np.arange(20)  # few rounds and 10 % noise: the interval is wider than the limit
    result = stats.aa_compare(rng.normal(1, 0.1, 20), rounds, rng.normal(1, 0.1, 20), rounds, limit_pct=1.5)
    assert result["agree"] is False


@pytest.mark.parametrize("n_cases,noise_j", [(1, 0.0), (3, 0.0), (6, 0.5), (10, 0.2)])
def test_split_energy_recovers_per_case_energies(n_cases, noise_j):
    from harness.measure.schedule import energy_weights

    rng = np.random.default_rng(n_cases)
    truth = rng.uniform(0.2, 2.0, n_cases)  # joules per call
    weights = energy_weights(n_cases, max(8, 2 * n_cases), seed=1)
    calls = weights * rng.integers(80, 120, size=(len(weights), 1))  # rounds per segment differ
    energy = calls @ truth + rng.normal(0.0, noise_j, len(weights))
    estimate, se = stats.split_energy(calls, energy)
    assert np.allclose(estimate, truth, rtol=0.02, atol=1e-9)
    assert np.all(np.abs(estimate - truth) <= 5 * se + 1e-9)


def test_split_energy_refuses_complete_rounds_only():
    calls = np.full((6, 3), 100)  # every segment of whole rounds: only the sum is known
    with pytest.raises(ValueError, match="rank"):
        stats.split_energy(calls, calls @ np.array([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("slowdown", [1.0, 1.1])
def test_runs_ratio_ci_between_two_drifting_runs(slowdown):
    """Two independent runs with their own drift: the block interval of the ratio covers the truth,
    where resampling single samples claims a precision the runs do not have."""
    covered_block = covered_pooled = 0
    for seed in range(30):
        ref = sum(drifting_run(2 * seed))
        cand = slowdown * sum(drifting_run(2 * seed + 1))
        ratio, lo, hi = stats.runs_ratio_ci(ref, cand, n_boot=400)
        covered_block += lo <= slowdown <= hi
        _, plo, phi = ratio_ci(ref, cand, n_boot=400)
        covered_pooled += plo <= slowdown <= phi
        assert ratio == pytest.approx(np.median(cand) / np.median(ref))
    assert covered_block >= 24 and covered_pooled <= 20
