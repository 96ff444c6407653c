"""The gate's ratio and both modes (harness.apps.gate.ratio) and its A/A refusal, on synthetic runs with a
known drift and on the committed bench-ci runs of real cards (docs/samples/h100/gate/ci-1..3, the first
version's schedule; docs/samples/h200/gate/ci-1..4, back to back on one H200 with the interleaved schedule)
with an injected slowdown of HilbertA."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_gate import results, write_run

from harness import cli
from harness.apps.gate import compare as gate
from harness.apps.gate import inputs, ratio
from harness.core.results import load_results

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "docs" / "samples"
PROBLEM = {"height": 128, "width": 128, "text_tokens": 512, "batch": 1, "heads": 24, "head_dim": 128,
           "dtype": "bfloat16", "layer": 0}
ANCHOR, SLOWED, OTHER = ("2048x2048/sdpa_cudnn/layer0", "2048x2048/hilberta_t16/layer0",
                         "2048x2048/sta_t16/layer0")
MEDIANS = {ANCHOR: 5.0, SLOWED: 1.8, OTHER: 2.5}


def timed_row(case: str, samples: np.ndarray, rounds: np.ndarray) -> dict:
    return {"kind": "kernel", "case": case, "method": case.split("/")[1], "status": "ok", "reason": None,
            "dense_reference": case == ANCHOR, "problem": dict(PROBLEM), "samples_ms": list(samples),
            "samples_round": [int(r) for r in rounds], "median_ms": float(np.median(samples))}


def drifting_run(seed: int, drift: float = 1.0, slowdown: float = 1.0, n_rounds: int = 60,
                 per_round: int = 2) -> dict:
    """One run of three cases of one problem, ``per_round`` samples per round, 1 % noise; every case scaled by
    ``drift`` (clocks), and SLOWED also by ``slowdown`` (the code)."""
    rng = np.random.default_rng(seed)
    rounds = np.repeat(np.arange(n_rounds), per_round)
    return results(*(timed_row(case, median * drift * (slowdown if case == SLOWED else 1.0)
                               * np.exp(rng.normal(0.0, 0.01, rounds.size)), rounds)
                     for case, median in MEDIANS.items()))


def flagged(verdict: dict) -> set[str]:
    return {e["case"] for e in verdict["cases"] if e["outcome"] == "regression"}


# ---- ratio mode on known data --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [("absolute", {ANCHOR, SLOWED, OTHER}), ("ratio", {SLOWED}),
                                            ("both", {SLOWED})])
def test_a_uniform_drift_cancels_in_ratio_mode_and_a_real_slowdown_does_not(tmp_path, mode, expected):
    """A 10 % slowdown of one case under a 5 % drift of every case: absolute time sees the drift too."""
    reference = drifting_run(seed=1)
    candidate = drifting_run(seed=2, drift=1.05, slowdown=1.10)
    verdict = gate.compare(reference, candidate, threshold_pct=2.0, mode=mode)
    assert flagged(verdict) == expected
    assert verdict["exit_code"] == 1 and verdict["mode"] == mode
    assert [a["anchor"] for a in verdict["anchors"]] == [ANCHOR]
    entries = {e["case"]: e for e in verdict["cases"]}
    for case, entry in entries.items():  # both numbers, every mode; the anchored ones per round
        assert entry["anchored"]["anchor"] == ANCHOR and entry["anchored"]["ref_rounds"] == 60
        assert entry["ratio"] == pytest.approx(1.05 * (1.10 if case == SLOWED else 1.0), rel=0.01)
        assert entry["anchored"]["ratio"] == pytest.approx(1.10 if case == SLOWED else 1.0, rel=0.01)
    assert entries[ANCHOR]["anchored"]["ci"] == [1.0, 1.0]  # the anchor against itself: 1 by construction
    # the anchor's own absolute drift is named whenever ratio numbers decide
    assert (ANCHOR in (verdict["warning"] or "")) == (mode != "absolute")
    _, summary = gate.write_outputs(verdict, tmp_path)
    text = summary.read_text()
    assert f"Mode: **{mode}**" in text and f"Anchors: `{ANCHOR}`" in text and "| Vs anchor |" in text
    slowed_line = next(line for line in text.splitlines() if f"`{SLOWED}`" in line)
    assert f"{entries[SLOWED]['anchored']['ratio']:.3f}" in slowed_line and f"{entries[SLOWED]['ratio']:.3f}" in slowed_line


def test_without_drift_ratio_and_both_pass_noise():
    verdicts = [gate.compare(drifting_run(seed), drifting_run(seed + 100), threshold_pct=2.0, mode=mode)
                for seed in range(5) for mode in ("ratio", "both")]
    assert [v["exit_code"] for v in verdicts] == [0] * len(verdicts)


def test_a_case_without_an_anchor_is_judged_on_absolute_time_and_says_so():
    def no_dense(run: dict) -> dict:
        return {**run, "cases": [c for c in run["cases"] if c["case"] != ANCHOR]}
    verdict = gate.compare(no_dense(drifting_run(1)), no_dense(drifting_run(2, slowdown=1.10)),
                           threshold_pct=2.0, mode="ratio")
    assert flagged(verdict) == {SLOWED} and verdict["anchors"] == []
    entry = next(e for e in verdict["cases"] if e["case"] == SLOWED)
    assert entry["anchored"]["outcome"] == "n/a" and "judged on absolute time" in entry["reason"]


@pytest.mark.parametrize("side", ["reference", "candidate"])
def test_an_anchor_timed_on_another_gpu_is_not_used_and_the_case_is_judged_on_absolute_time(side):
    """A --gpus run can time a sub-group on another card than its dense anchor: their rounds are not common."""
    runs = {"reference": drifting_run(1), "candidate": drifting_run(2, slowdown=1.10)}
    for row in runs[side]["cases"]:
        row["device_index"] = 1 if row["case"] == ANCHOR else 0
    verdict = gate.compare(runs["reference"], runs["candidate"], threshold_pct=2.0, mode="ratio")
    entry = next(e for e in verdict["cases"] if e["case"] == SLOWED)
    assert entry["anchored"]["outcome"] == "n/a"
    assert f"in the {side} the anchor {ANCHOR} ran on another GPU" in entry["anchored"]["reason"]
    assert SLOWED in flagged(verdict)  # still caught, on absolute time


def test_rows_without_samples_round_count_one_sample_per_round():
    ref, cand = drifting_run(1, per_round=1), drifting_run(2, slowdown=1.10, per_round=1)
    for row in ref["cases"] + cand["cases"]:
        del row["samples_round"]
    verdict = gate.compare(ref, cand, threshold_pct=2.0, mode="both")
    assert flagged(verdict) == {SLOWED}
    assert {e["anchored"]["ref_rounds"] for e in verdict["cases"]} == {60}


@pytest.mark.parametrize("bad", ["fast", None, 3])
def test_an_unknown_mode_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="mode"):
        gate.compare(drifting_run(1), drifting_run(2), mode=bad)


# ---- where the mode comes from --------------------------------------------------------------------------------

@pytest.mark.parametrize("recorded, expected", [({}, ("absolute", "the default")),
                                                ({"threshold_pct": 5, "mode": "both"}, ("both", "the stored reference"))])
def test_the_mode_comes_from_a_stored_reference_when_the_suite_is_not_here(recorded, expected):
    assert inputs.trusted_mode("no-such-suite", {"suite_config": {"gate": recorded}}) == expected


def test_a_bad_recorded_mode_names_the_field():
    with pytest.raises(ValueError, match="suite_config.gate.mode"):
        inputs.trusted_mode("no-such-suite", {"suite_config": {"gate": {"mode": "relative"}}})


@pytest.mark.parametrize("mode", ["ratio", "both"])
def test_cli_mode_flag_reaches_the_verdict(tmp_path, capsys, mode):
    ref = write_run(tmp_path / "ref", drifting_run(1))
    cand = write_run(tmp_path / "cand", drifting_run(2, drift=1.05, slowdown=1.10))
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(cand), "--threshold", "2",
                     "--mode", mode]) == 1
    assert f"mode {mode} from --mode" in capsys.readouterr().out
    assert json.loads((cand / "verdict.json").read_text())["mode"] == mode


# ---- the committed runs of real cards ------------------------------------------------------------------------

# card -> the runs the gate can use: on the H200, run 1's own A/A control disagreed (next test)
USABLE_RUNS = {"h100": (1, 2, 3), "h200": (2, 3, 4)}
# what a 10 % slowdown must flag on every card, in every mode (the first version's 2048 runs have no rounds)
ALWAYS_CAUGHT = {"1024x1024/hilberta_t16/layer0", "1024x1024/hilberta_t16/layer1"}


def _sample_run(card: str, index: int) -> dict:
    return load_results(SAMPLES / card / "gate" / f"ci-{index}")


def _slowed_hilberta(run: dict) -> dict:
    out = copy.deepcopy(run)
    for row in out["cases"]:
        if row.get("method") == "hilberta_t16":
            row["samples_ms"] = [s * 1.10 for s in row["samples_ms"]]
            row["median_ms"] *= 1.10
    return out


@pytest.mark.parametrize("mode", list(ratio.MODES))
@pytest.mark.parametrize("card, ref_index, cand_index", [
    (card, *pair) for card, runs in USABLE_RUNS.items() for pair in itertools.permutations(runs, 2)])
def test_real_runs_pass_as_they_are_and_catch_a_ten_percent_hilberta_slowdown(mode, card, ref_index, cand_index):
    pct, per_case, _ = inputs.trusted_thresholds("bench-ci")
    reference, candidate = _sample_run(card, ref_index), _sample_run(card, cand_index)
    assert gate.compare(reference, candidate, pct, per_case, mode=mode)["exit_code"] == 0
    verdict = gate.compare(reference, _slowed_hilberta(candidate), pct, per_case, mode=mode)
    assert verdict["exit_code"] == 1
    assert ALWAYS_CAUGHT <= flagged(verdict)
    assert all("/hilberta_t16/" in case for case in flagged(verdict))  # the dense anchor is never blamed
    if card == "h200":  # rounds recorded: every slowed case is caught, 2048 included, in every mode
        slowed = {row["case"] for row in candidate["cases"] if row.get("method") == "hilberta_t16"}
        assert flagged(verdict) == slowed


def test_the_h200_run_whose_aa_control_disagreed_is_refused_against_each_other_run():
    noisy = _sample_run("h200", 1)
    assert [pair["agree"] for pair in noisy["aa_pairs"]].count(False) == 1
    pct, per_case, _ = inputs.trusted_thresholds("bench-ci")
    for other in USABLE_RUNS["h200"]:
        for reference, candidate in ((noisy, _sample_run("h200", other)), (_sample_run("h200", other), noisy)):
            verdict = gate.compare(reference, candidate, pct, per_case, mode="both")
            assert (verdict["verdict"], verdict["exit_code"]) == ("unusable", 2)


# ---- A/A control -----------------------------------------------------------------------------------------------

AA_BAD = {"a": "2048x2048/hilberta_t16/layer0", "b": "2048x2048/hilberta_t16_aa/layer0", "ratio": 1.031,
          "ci95": [1.018, 1.044], "limit_pct": 1.5, "agree": False}
AA_GOOD = {**AA_BAD, "b": "1024x1024/hilberta_t16_aa/layer0", "ratio": 1.002, "ci95": [0.996, 1.007],
           "agree": True}


@pytest.mark.parametrize("side, extra", [("candidate", []), ("reference", []), ("candidate", ["--force"])])
def test_cli_a_run_whose_aa_control_disagreed_is_unusable_and_names_the_pair(tmp_path, side, extra):
    runs = {"reference": drifting_run(1), "candidate": drifting_run(2)}
    runs[side]["aa_pairs"] = [AA_GOOD, AA_BAD]
    ref, cand = write_run(tmp_path / "ref", runs["reference"]), write_run(tmp_path / "cand", runs["candidate"])
    done = subprocess.run([sys.executable, "-m", "harness", "gate", "--reference", str(ref), "--candidate",
                           str(cand), *extra], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    assert f"the {side}'s A/A pair {AA_BAD['a']} vs {AA_BAD['b']}: ratio 1.031" in done.stdout
    assert AA_GOOD["b"] not in done.stdout
    verdict = json.loads((cand / "verdict.json").read_text())
    assert verdict["verdict"] == "unusable" and verdict["exit_code"] == 2 and verdict["cases"] == []


def test_agreeing_aa_pairs_do_not_block_the_gate():
    ref, cand = drifting_run(1), drifting_run(2)
    ref["aa_pairs"] = cand["aa_pairs"] = [AA_GOOD]
    assert gate.compare(ref, cand, threshold_pct=2.0)["exit_code"] == 0


@pytest.mark.parametrize("mutate, field", [
    (lambda run: run.update(aa_pairs={"a": "x"}), "aa_pairs: expected a list"),
    (lambda run: run.update(aa_pairs=[{**AA_BAD, "agree": "no"}]), "aa_pairs[0]"),
    (lambda run: run["cases"][0].update(samples_round=[0, 1]), "samples_round has 2 rounds"),
])
def test_cli_malformed_aa_pairs_or_rounds_name_the_file_and_field(tmp_path, capsys, mutate, field):
    bad = drifting_run(2)
    mutate(bad)
    ref, cand = write_run(tmp_path / "ref", drifting_run(1)), write_run(tmp_path / "cand", bad)
    assert cli.main(["gate", "--reference", str(ref), "--candidate", str(cand)]) == 2
    err = capsys.readouterr().err
    assert str(cand) in err and field in err
