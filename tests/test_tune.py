"""Block-size tuning (harness.apps.tune) on CPU: a fake kernel with scripted behaviours for the selection logic,
and the real HilbertA kernel in the Triton interpreter with a two-config space for the store/lookup round trip.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources

from baselines.base import Method, PreparedAttention
from baselines.problem import Problem
from harness.apps import tune
from kernels import config as kconfig
from kernels.config import KernelConfig

TINY = Problem(height=4, width=4, text_tokens=8, heads=1, head_dim=16, dtype="float32")
FAKE_DEFAULT = KernelConfig(64, 64, 4, 2)
# Every pass short: what the tests check is which candidate wins, not how precisely.
FAST_PLAN = tune.TunePlan(
    coarse={"warmup_ms": 0.0, "min_samples": 3, "max_samples": 3, "budget_ms": 1.0, "rounds": 1},
    top_k=2,
    refine={"warmup_ms": 0.0, "min_samples": 5, "max_samples": 5, "budget_ms": 1.0, "rounds": 2},
    final={"warmup_ms": 0.0, "min_samples": 5, "max_samples": 5, "budget_ms": 1.0, "rounds": 2},
)
# The real kernels in the interpreter take ~0.1-1 s a call: as few calls as the passes allow.
INTERPRETER_PLAN = tune.TunePlan(
    coarse={"warmup_ms": 0.0, "min_samples": 1, "max_samples": 1, "budget_ms": 1.0, "rounds": 1},
    top_k=1,
    refine={"warmup_ms": 0.0, "min_samples": 2, "max_samples": 2, "budget_ms": 1.0, "rounds": 1},
    final={"warmup_ms": 0.0, "min_samples": 2, "max_samples": 2, "budget_ms": 1.0, "rounds": 1},
)


def dense(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def compile_failure(q, k, v):
    raise OutOfResources(262144, 232448, "shared memory")


def sleepy(q, k, v):
    time.sleep(0.02)  # far slower than `dense`, even on a loaded machine
    return dense(q, k, v)


def wrong(q, k, v):  # the fastest of all, and wrong
    return v


def crash(q, k, v):
    raise RuntimeError("illegal memory access")


def flaky():
    """Right on its first two calls (the lifecycle's first call and correctness check), raises when timed."""
    calls = []

    def run(q, k, v):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("launch failed")
        return dense(q, k, v)
    return run


@pytest.fixture
def fake_kernel(monkeypatch, tmp_path):
    """Register a kernel "fake" whose configs behave as scripted; returns a function taking the script
    ({KernelConfig: run function}, the default included) and giving the target."""
    monkeypatch.setitem(kconfig.DEFAULTS, "fake", FAKE_DEFAULT)
    monkeypatch.setattr(kconfig, "CONFIG_DIR", tmp_path / "configs")
    (tmp_path / "configs").mkdir()
    # one intra-op thread: on a loaded machine, OpenMP barriers could make `dense` as slow as `sleepy`
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def make(script: dict) -> tune.TuneTarget:
        def candidate(config):  # what the registry gives for a real kernel: a method with that config
            def build(problem, device):
                return PreparedAttention(method="fake", problem=problem, backend="fake", run=script[config],
                                         image_order=None, mask_rows=None, allowed_pairs=TINY.seq_len ** 2,
                                         computed_pairs=TINY.seq_len ** 2)
            return Method(name=f"fake_cfg_{config.name}", label=config.name, family="control", build=build)

        def problems(args):
            return [tune.TuneProblem("fake", TINY, "fake", "d16_float32_L16_g4", candidate, "fake")]

        target = tune.TuneTarget("fake", "fake", problems, lambda head_dim, space: list(script))
        monkeypatch.setitem(tune.TARGETS, "fake", target)
        return target
    yield make
    torch.set_num_threads(threads)


def tune_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    return parser.parse_args(argv)


def settings(*argv: str) -> tune.TuneSettings:
    return tune.TuneSettings.from_args(tune_args(*argv))


def statuses(outcome: tune.ProblemOutcome) -> dict[str, tuple[str, str | None]]:
    return {c.config.name: (c.row["status"], c.row["reason"]) for c in outcome.candidates}


def test_skips_uncompilable_never_picks_incorrect_and_picks_the_fastest(fake_kernel):
    fast, slow, broken, bad, crashed = (KernelConfig(64, 32, 4, s) for s in (1, 2, 3, 4, 5))
    script = {FAKE_DEFAULT: sleepy, fast: dense, slow: sleepy, broken: compile_failure, bad: wrong, crashed: crash}
    target = fake_kernel(script)
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, tp, target.space(16, "full"), FAST_PLAN, torch.device("cpu"),
                                deadline=time.monotonic() + 60)
    seen = statuses(outcome)
    assert seen[broken.name][0] == "skipped" and seen[broken.name][1].startswith("does not compile or fit: "
                                                                                 "OutOfResources")
    assert seen[bad.name][0] == "incorrect" and "relative error" in seen[bad.name][1]
    assert seen[crashed.name] == ("failed", "first call: RuntimeError: illegal memory access")
    assert outcome.best.config == fast
    assert outcome.best.row["extra"]["chosen"] and outcome.best.row["extra"]["stage"] == "final"
    untimed = [c for c in outcome.candidates if c.config in (broken, bad, crashed)]
    assert all("samples_ms" not in c.row for c in untimed)
    ev = outcome.evidence
    assert ev["candidates"] == 3 and ev["speedup_vs_default"] > 1.0
    assert ev["speedup_ci95"][0] <= ev["speedup_vs_default"] <= ev["speedup_ci95"][1]
    assert ev["default_median_ms"] > ev["median_ms"]


def test_a_candidate_that_fails_while_timed_is_dropped_and_the_rest_still_timed(fake_kernel):
    unstable = KernelConfig(64, 32, 4, 1)
    target = fake_kernel({FAKE_DEFAULT: dense, unstable: flaky()})
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, tp, target.space(16, "full"), FAST_PLAN, torch.device("cpu"),
                                deadline=time.monotonic() + 60)
    seen = statuses(outcome)
    assert seen[unstable.name][0] == "failed" and "while timing" in seen[unstable.name][1]
    assert outcome.best.config == FAKE_DEFAULT and outcome.evidence["speedup_vs_default"] == 1.0


def test_the_default_is_kept_when_it_wins_the_head_to_head(fake_kernel, monkeypatch):
    """A config that looked faster in the coarse and refine passes but loses the final pass is not stored."""
    final_started = []
    time_pass = tune.search._time

    def record_final(candidates, policy, device, stage):
        final_started.append(stage == "final")
        return time_pass(candidates, policy, device, stage)

    def fast_until_final(q, k, v):
        if any(final_started):
            time.sleep(0.05)
        return dense(q, k, v)

    monkeypatch.setattr(tune.search, "_time", record_final)
    target = fake_kernel({FAKE_DEFAULT: sleepy, KernelConfig(64, 32, 4, 1): fast_until_final})
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, tp, target.space(16, "full"), FAST_PLAN, torch.device("cpu"),
                                deadline=time.monotonic() + 60)
    assert final_started[-1]
    assert outcome.best.config == FAKE_DEFAULT and outcome.evidence["speedup_vs_default"] == 1.0
    assert [c.row["extra"]["chosen"] for c in outcome.candidates] == [True, False]


def test_a_problem_is_timed_against_its_own_default(fake_kernel):
    """A problem whose kernel runs another config without an entry (STA's one stage at 128-token tiles) is
    timed against that config, not against the kernel's safe default (which may not even fit)."""
    own_default = KernelConfig(64, 64, 4, 1)
    target = fake_kernel({FAKE_DEFAULT: compile_failure, own_default: sleepy, KernelConfig(64, 32, 4, 1): dense})
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, replace(tp, default=own_default), target.space(16, "full"), FAST_PLAN,
                                torch.device("cpu"), deadline=time.monotonic() + 60)
    assert outcome.default.config == own_default and outcome.default.is_default
    assert outcome.evidence["default_median_ms"] is not None and outcome.evidence["speedup_vs_default"] > 1.0


@pytest.mark.parametrize("tile, stages", [("8x8", 2), ("16x8", 1)])
def test_sta_problems_carry_the_config_sta_runs_without_an_entry(tile, stages, monkeypatch, tmp_path, caplog):
    from baselines.sliding_tile_kernel import StaGeometry, sta_config

    monkeypatch.setattr(kconfig, "CONFIG_DIR", tmp_path)  # no stored entries
    monkeypatch.setattr(kconfig, "_warned", set())  # each missing key is named once a process
    (tp,) = tune.TARGETS["sta"].problems(settings("--kernel", "sta", "--resolutions", "512x512", "--sta-tiles", tile))
    rows, cols = map(int, tile.split("x"))
    geometry = StaGeometry(tp.problem.height, tp.problem.width, tp.problem.text_tokens, (rows, cols), (3, 3))
    monkeypatch.setattr("baselines.sliding_tile_kernel.device_arch", lambda device=None: "sm90")
    assert tp.default.num_stages == stages
    with caplog.at_level("WARNING", logger="kernels.config"):
        assert (tp.default, "default") == sta_config(geometry, 128, torch.bfloat16, torch.device("cpu"))
    assert f"using the safe default {tp.default.name} " in caplog.text  # the warning names what runs


def test_nothing_is_picked_when_every_candidate_is_wrong(fake_kernel):
    target = fake_kernel({FAKE_DEFAULT: wrong, KernelConfig(64, 32, 4, 1): compile_failure})
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, tp, target.space(16, "full"), FAST_PLAN, torch.device("cpu"),
                                deadline=time.monotonic() + 60)
    assert outcome.best is None and "no candidate" in outcome.note
    assert "no candidate" in tune.speedup_table([outcome])


def test_a_spent_budget_skips_with_a_reason(fake_kernel):
    target = fake_kernel({FAKE_DEFAULT: dense, KernelConfig(64, 32, 4, 1): dense})
    (tp,) = target.problems(None)
    outcome = tune.tune_problem(target, tp, target.space(16, "full"), FAST_PLAN, torch.device("cpu"),
                                deadline=time.monotonic() - 1)
    assert {s for s, _ in statuses(outcome).values()} == {"skipped"}
    assert outcome.best is None and "budget" in outcome.note


def test_tune_writes_rows_and_stores_the_winner_under_its_key(fake_kernel, monkeypatch, tmp_path):
    fast = KernelConfig(64, 32, 4, 1)
    fake_kernel({FAKE_DEFAULT: sleepy, fast: dense, KernelConfig(64, 32, 4, 2): wrong})
    monkeypatch.setattr(kconfig, "device_arch", lambda device=None: "sm90")
    outcomes, results_path = tune.tune(["fake"], settings(), FAST_PLAN, torch.device("cpu"), tmp_path / "run",
                                       write=True)
    assert kconfig.lookup("fake", "sm90", "d16_float32_L16_g4") == (fast, "sm90.json:d16_float32_L16_g4")
    entry = json.loads((kconfig.CONFIG_DIR / "sm90.json").read_text())["kernels"]["fake"]["d16_float32_L16_g4"]
    assert {"median_ms", "ci95_ms", "default_median_ms", "speedup_vs_default", "candidates", "gpu", "date",
            "torch", "triton", "driver"} <= set(entry)
    rows = json.loads(results_path.read_text())["cases"]
    assert {r["kind"] for r in rows} == {"tune"} and len(rows) == 3
    by_config = {r["label"]: r for r in rows}
    assert by_config[fast.name]["extra"]["chosen"] and by_config[fast.name]["samples_ms"]
    assert by_config["m64_n32_w4_s2"]["status"] == "incorrect"
    assert all(r["case"].startswith(f"{TINY.resolution}/fake/") for r in rows)


def _store_keys(worker: int, keys: int) -> None:
    for index in range(keys):
        kconfig.store("fake", "sm90", f"d16_float32_L{worker}_g{index}", FAKE_DEFAULT, {"median_ms": 1.0}, {})


def test_two_tunes_storing_at_once_keep_every_entry(fake_kernel):
    """Tunes on two cards of one host store into the same arch file: none may lose the other's entries."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")  # the children inherit the patched CONFIG_DIR
    workers = [fork.Process(target=_store_keys, args=(worker, 25)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [process.exitcode for process in workers] == [0] * 4
    stored = json.loads((kconfig.CONFIG_DIR / "sm90.json").read_text())["kernels"]["fake"]
    assert len(stored) == 100
    assert not [path.name for path in kconfig.CONFIG_DIR.iterdir() if path.name != "sm90.json"]  # no temp files


def test_no_write_leaves_the_config_store_alone(fake_kernel, monkeypatch, tmp_path):
    fake_kernel({FAKE_DEFAULT: dense, KernelConfig(64, 32, 4, 1): dense})
    monkeypatch.setattr(kconfig, "device_arch", lambda device=None: "sm90")
    tune.tune(["fake"], settings(), FAST_PLAN, torch.device("cpu"), tmp_path / "run", write=False)
    assert not (kconfig.CONFIG_DIR / "sm90.json").exists()


@pytest.mark.parametrize("winner", ["tuned", "default"])
def test_store_from_results_stores_what_the_tune_would_have_stored(winner, fake_kernel, monkeypatch, tmp_path):
    """A tune run with --no-write, then --store-from its results: the same entry as a tune that writes."""
    fast = KernelConfig(64, 32, 4, 1)
    script = {FAKE_DEFAULT: dense, fast: sleepy} if winner == "default" else {FAKE_DEFAULT: sleepy, fast: dense}
    fake_kernel(script)
    monkeypatch.setattr(kconfig, "device_arch", lambda device=None: "sm90")
    (outcome,), results_path = tune.tune(["fake"], settings(), FAST_PLAN, torch.device("cpu"), tmp_path / "run",
                                         write=False)
    assert not (kconfig.CONFIG_DIR / "sm90.json").exists()
    (written,) = tune.store_from_results(results_path.parent)
    assert written == kconfig.CONFIG_DIR / "sm90.json"
    expected = FAKE_DEFAULT if winner == "default" else fast
    assert outcome.best.config == expected
    assert kconfig.lookup("fake", "sm90", "d16_float32_L16_g4") == (expected, "sm90.json:d16_float32_L16_g4")
    entry = json.loads(written.read_text())["kernels"]["fake"]["d16_float32_L16_g4"]
    for key in ("median_ms", "default_median_ms", "speedup_vs_default", "candidates"):
        assert entry[key] == pytest.approx(outcome.evidence[key]), key
    assert entry["from_results"] == results_path.parent.name


@pytest.mark.parametrize("winner, stages", [("tuned", ["coarse", "refine", "final"]),
                                           ("default", ["coarse", "refine"])])  # the default won: no head-to-head
def test_tune_records_the_round_orders_of_every_pass(winner, stages, fake_kernel, tmp_path):
    """Each timing pass is a group of results ``schedule_orders``, as the runner records its groups: the
    candidates' case ids and per round a permutation of their indices, so no config won by its slot."""
    fast, slow = KernelConfig(64, 32, 4, 1), KernelConfig(64, 32, 4, 2)
    script = {FAKE_DEFAULT: dense, fast: sleepy, slow: sleepy} if winner == "default" else \
        {FAKE_DEFAULT: sleepy, fast: dense, slow: sleepy}
    fake_kernel(script)
    _, results_path = tune.tune(["fake"], settings(), FAST_PLAN, torch.device("cpu"), tmp_path / "run", write=False)
    results = json.loads(results_path.read_text())
    label = f"{TINY.resolution}/fake"
    groups = {f"{label}/{stage}": getattr(FAST_PLAN, stage) for stage in stages}
    orders = results["schedule_orders"]
    assert set(orders) == set(results["schedule"]["cases"]) == set(groups)
    assert results["schedule"]["kind"] == "interleaved-single-call"
    assert results["schedule"]["rounds"] == min(len(group_orders) for group_orders in orders.values())
    rows = {r["case"]: r for r in results["cases"]}
    for group, policy in groups.items():
        cases = results["schedule"]["cases"][group]
        assert policy["rounds"] <= len(orders[group]) <= policy["max_samples"]
        assert all(sorted(order) == list(range(len(cases))) for order in orders[group])
        assert set(cases) <= set(rows) and all(rows[case]["status"] == "ok" for case in cases)
    assert len(results["schedule"]["cases"][f"{label}/coarse"]) == 3  # every correct candidate
    for r in rows.values():  # a row's samples come from the pass its stage names, one call per round
        group = f"{label}/{r['extra']['stage']}"
        assert r["case"] in results["schedule"]["cases"][group] and len(r["samples_ms"]) == len(orders[group])


def test_store_from_results_refuses_a_cpu_run(fake_kernel, tmp_path):
    fake_kernel({FAKE_DEFAULT: dense})
    _, results_path = tune.tune(["fake"], settings(), FAST_PLAN, torch.device("cpu"), tmp_path / "run", write=False)
    with pytest.raises(ValueError, match="arch"):
        tune.store_from_results(results_path)


@pytest.mark.parametrize("kernel", ["hilberta", "sta", "all"])
def test_dry_run_lists_space_problems_and_keys_without_running(kernel, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert tune.run(tune_args("--kernel", kernel, "--dry-run")) == 0
    out = capsys.readouterr().out
    from kernels.layout import HilbertLayout

    if kernel in ("hilberta", "all"):
        assert f"hilberta: {len(kconfig.config_space(128))} configs (full space)" in out
        layout = HilbertLayout(128, 128, 512, 16)
        assert f"2048x2048/hilberta_t16: L=16896, key {kconfig.config_key(128, 'bfloat16', 16896, layout.tile_len)}" \
            in out
        assert "m128_n64_w8_s3" in out
    if kernel in ("sta", "all"):
        assert "1024x1024/sta_tile8x8_win3x3: L=4608, key d128_bfloat16_L4096_g64" in out
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("space, expected", [("full", 8), ("quick", 6)])
def test_sta_space_varies_only_its_knobs(space, expected):
    configs = tune.TARGETS["sta"].space(128, space)
    assert len(configs) == len(set(configs)) == expected
    assert {(c.block_m, c.block_n) for c in configs} == {(kconfig.DEFAULTS["sta"].block_m,
                                                           kconfig.DEFAULTS["sta"].block_n)}


def test_quick_hilberta_space_is_a_subset():
    full, quick = (tune.TARGETS["hilberta"].space(128, s) for s in ("full", "quick"))
    assert set(quick) < set(full) and len(quick) >= 6


@pytest.mark.parametrize("argv, message", [
    (["--resolutions", "1024"], "WIDTHxHEIGHT"),
    (["--resolutions", "1000x1000"], "multiple of 16"),
    (["--tiles", "4,x"], "positive integers"),
    (["--kernel", "sta", "--sta-tiles", "8"], "AxB"),
])
def test_bad_problem_arguments_are_reported(argv, message, capsys):
    assert tune.run(tune_args(*argv, "--dry-run")) == 2
    assert message in capsys.readouterr().err


def hilberta_lookup(device: torch.device) -> tuple[KernelConfig, str]:
    from kernels.layout import HilbertLayout

    layout = HilbertLayout(8, 8, 16, 4)
    return importlib.import_module("kernels.hilbert_attention").default_config(layout, 16, torch.float32, device)


def sta_lookup(device: torch.device) -> tuple[KernelConfig, str]:
    from baselines.sliding_tile_kernel import StaGeometry, sta_config

    return sta_config(StaGeometry(8, 8, 16, (4, 4), (3, 3)), 16, torch.float32, device)


@pytest.mark.slow
@pytest.mark.parametrize("kernel, kernel_module, lookup", [
    ("hilberta", "kernels.hilbert_attention", hilberta_lookup),
    ("sta", "baselines.sliding_tile_kernel", sta_lookup),
])
def test_real_kernel_tunes_in_the_interpreter_and_its_lookup_returns_the_winner(kernel, kernel_module, lookup,
                                                                                  monkeypatch, tmp_path):
    """Two configs plus the default on an 8x8 grid: the winner is stored and the kernel's own lookup finds it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the CPU path of the Triton kernels needs TRITON_INTERPRET=1")
    space = [KernelConfig(16, 16, 4, 1), KernelConfig(32, 32, 8, 1)]
    monkeypatch.setitem(tune.TARGETS, kernel, replace(tune.TARGETS[kernel], space=lambda head_dim, _: space))
    monkeypatch.setattr(kconfig, "CONFIG_DIR", tmp_path / "configs")
    (tmp_path / "configs").mkdir()
    for module in (kconfig, importlib.import_module(kernel_module)):  # a GPU architecture, not "cpu"
        monkeypatch.setattr(module, "device_arch", lambda device=None: "sm90")
    args = settings("--kernel", kernel, "--resolutions", "128x128", "--tiles", "4", "--sta-tiles", "4x4",
                     "--dtype", "float32", "--head-dim", "16", "--heads", "1", "--text-tokens", "16")
    (outcome,), results_path = tune.tune([kernel], args, INTERPRETER_PLAN, torch.device("cpu"),
                                         tmp_path / "run", write=True)
    assert [c.row["status"] for c in outcome.candidates] == ["ok", "ok", "ok"]
    assert all(c.row["correctness"]["rel_err"] < 1e-4 for c in outcome.candidates)
    config, source = lookup(torch.device("cpu"))
    assert config == outcome.best.config and source == f"sm90.json:{outcome.tune_problem.key}"
    assert len(json.loads(results_path.read_text())["cases"]) == 3
