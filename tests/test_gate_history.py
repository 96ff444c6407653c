"""A stored reference's history and the between-run spread (harness.apps.gate.references): the medians of the
last runs stored for a GPU model and suite carried forward and truncated, seeded with ``--history``, the
spread computed from them, shown next to the CI in summary.md and the report, and noted in the verdict when
it exceeds the threshold; references stored before histories existed still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_gate import H100, gate_args, results, row, write_run

from harness import cli
from harness.apps.gate import compare as gate
from harness.apps.gate import inputs, references

REPO = Path(__file__).resolve().parent.parent
CASE, ANCHOR = "2048x2048/hilberta_t16/layer0", "2048x2048/sdpa_cudnn/layer0"
PROBLEM = {"height": 128, "width": 128, "text_tokens": 512, "batch": 1, "heads": 24, "head_dim": 128,
           "dtype": "bfloat16", "layer": 0}
STORED = ("nvidia-h100-80gb-hbm3", "bench-ci.json")


def samples_around(median: float, seed: int, n: int = 40) -> list[float]:
    """``n`` samples whose median is exactly ``median`` (odd count around it), with 1 % noise."""
    noise = np.abs(np.random.default_rng(seed).normal(0.0, 0.01, n // 2))
    return sorted([median, *(median * (1 + noise)), *(median * (1 - noise))])


def run_of(index: int, case_ms: float, anchor_ms: float = 5.0, env: dict = H100) -> dict:
    """One bench-ci run of a case and its dense anchor, with the given medians."""
    rows = [{**row(name, samples_around(ms, seed=10 * index + k)), "problem": dict(PROBLEM),
             "dense_reference": name == ANCHOR} for k, (name, ms) in enumerate(((CASE, case_ms), (ANCHOR, anchor_ms)))]
    return results(*rows, env=env, suite="bench-ci", run_id=f"run-{index}")


@pytest.fixture
def refs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(inputs, "REFERENCES_DIR", tmp_path / "references")
    return tmp_path / "references" / STORED[0] / STORED[1]


def stored_history(path: Path) -> list[dict]:
    return json.loads(path.read_text())["stored_reference"]["history"]


def store_all(case_ms: list[float]) -> Path:
    path = None
    for index, ms in enumerate(case_ms):
        path, _, _ = references.store_reference(run_of(index, ms), f"results/run-{index}")
    return path


# ---- the history: carried forward, truncated, seeded --------------------------------------------------------

@pytest.mark.parametrize("n_runs", [1, 2, references.KEEP, references.KEEP + 3])
def test_storing_carries_the_history_forward_and_keeps_the_newest(refs, n_runs):
    medians = [1.0 + 0.01 * i for i in range(n_runs)]
    assert store_all(medians) == refs
    history = stored_history(refs)
    kept = list(range(n_runs))[-references.KEEP:]
    assert [h["run_id"] for h in history] == [f"run-{i}" for i in kept]  # oldest first, newest last
    assert [h["medians"][CASE] for h in history] == pytest.approx([medians[i] for i in kept])
    assert all(h["medians"][ANCHOR] == pytest.approx(5.0) for h in history)  # the anchors too
    assert [h["source"] for h in history] == [f"results/run-{i}" for i in kept]
    assert json.loads(refs.read_text())["run_id"] == f"run-{n_runs - 1}"  # the newest run is stored whole


def test_storing_the_same_run_twice_counts_it_once(refs):
    references.store_reference(run_of(0, 1.0), "a")
    references.store_reference(run_of(1, 1.1), "b")
    references.store_reference(run_of(1, 1.1), "b again")
    assert [(h["run_id"], h["source"]) for h in stored_history(refs)] == [("run-0", "a"), ("run-1", "b again")]


def test_a_reference_stored_before_histories_counts_as_one_run(refs):
    refs.parent.mkdir(parents=True)
    old = run_of(0, 1.0)
    refs.write_text(json.dumps({**old, "stored_reference": {"source": "old", "stored": "2026-11-27"}}))
    verdict = gate.compare(gate._load(refs), run_of(9, 1.0))
    assert {e["case"]: e["between_runs"] for e in verdict["cases"]}[CASE] == {"runs": 1, "spread_pct": None}
    assert verdict["history"]["run_ids"] == ["run-0"] and verdict["spread_over_threshold"] == []
    references.store_reference(run_of(1, 1.2), "new")
    assert [h["run_id"] for h in stored_history(refs)] == ["run-0", "run-1"]


def test_the_committed_h100_reference_without_history_still_gates(tmp_path):
    stored = REPO / "suites" / "references" / STORED[0] / STORED[1]
    reference = gate._load(stored)
    assert "history" not in reference["stored_reference"]
    verdict = gate.compare(reference, reference)
    assert verdict["exit_code"] == 0 and all(e["between_runs"]["runs"] == 1 for e in verdict["cases"])
    summary = gate.summary_markdown(verdict)
    assert "| 1 run |" in summary and "the reference holds one run (`20261127-110554-bench-ci`)" in summary


def test_a_previous_reference_on_another_driver_starts_the_history_again(refs):
    references.store_reference(run_of(0, 1.0, env={**H100, "driver_version": "535.00"}), "old driver")
    _, history, note = references.store_reference(run_of(1, 1.0), "new driver")
    assert [h["run_id"] for h in history] == ["run-1"]
    assert "starts again" in note and "driver" in note


def test_cli_seeds_the_history_from_several_runs(refs, tmp_path, capsys):
    dirs = [write_run(tmp_path / f"run-{i}", run_of(i, ms)) for i, ms in enumerate((1.0, 1.1, 1.05))]
    argv = ["--candidate", str(dirs[2]), "--update-reference", "--history", str(dirs[0]), str(dirs[1])]
    assert gate.run(gate_args(*argv)) == 0
    assert "medians of 3 run(s) (run-0, run-1, run-2)" in capsys.readouterr().out
    assert [h["source"] for h in stored_history(refs)] == [str(d) for d in dirs]
    assert gate.run(gate_args("--reference", "auto", "--candidate", str(dirs[1]))) == 0
    verdict = json.loads((dirs[1] / "verdict.json").read_text())
    between = {e["case"]: e["between_runs"] for e in verdict["cases"]}
    assert between[CASE] == {"runs": 3, "spread_pct": pytest.approx(10.0)}


@pytest.mark.parametrize("argv, message", [
    (["--history", "{other}"], "--history goes with --update-reference"),
    (["--update-reference", "--history", "{other}"], "--history {other}: the reference ran on"),
    (["--update-reference", "--history", "{missing}"], "no results file"),
])
def test_cli_history_refusals(refs, tmp_path, capsys, argv, message):
    cand = write_run(tmp_path / "cand", run_of(1, 1.0))
    other = write_run(tmp_path / "other", run_of(0, 1.0, env={**H100, "gpu_name": "NVIDIA H200"}))
    fill = {"other": other, "missing": tmp_path / "missing"}
    assert cli.main(["gate", "--candidate", str(cand), *(a.format(**fill) for a in argv)]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not refs.exists()


@pytest.mark.parametrize("history, field", [
    ("nope", "stored_reference.history: expected a list"),
    ([{"run_id": "x"}], "stored_reference.history[0]: expected an object with 'medians'"),
    ([{"run_id": "x", "medians": {CASE: -1.0}}], f"history[0].medians['{CASE}']"),
])
def test_a_malformed_history_names_the_field(history, field):
    reference = {**run_of(0, 1.0), "stored_reference": {"history": history}}
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        gate.compare(reference, run_of(1, 1.0))


# ---- the spread, in the verdict, summary.md and the report ---------------------------------------------------

@pytest.mark.parametrize("values, expected", [([2.0], None), ([2.0, 2.2], 10.0), ([1.0, 1.3, 1.1, 0.9], 44.444),
                                              ([], None)])
def test_spread_is_max_over_min_of_the_medians(values, expected):
    spread = references.spread(values)
    assert spread["runs"] == len(values)
    assert spread["spread_pct"] == (None if expected is None else pytest.approx(expected, abs=1e-3))


def test_the_spread_comes_from_medians_not_means(refs):
    skewed = run_of(1, 1.0)
    skewed["cases"][0]["samples_ms"] = sorted([*skewed["cases"][0]["samples_ms"], 50.0, 60.0])
    references.store_reference(run_of(0, 1.0), "a")
    references.store_reference(skewed, "b")
    between = references.between_runs(stored_history(refs), CASE)
    assert between["runs"] == 2 and between["spread_pct"] < 1.0  # two outliers barely move a median


def test_a_common_drift_spreads_the_times_but_not_the_ratios_to_the_anchor(refs):
    for index, drift in enumerate((1.0, 1.08, 1.04)):
        references.store_reference(run_of(index, 1.0 * drift, anchor_ms=5.0 * drift), f"run {index}")
    verdict = gate.compare(gate._load(refs), run_of(9, 1.0), mode="ratio")
    entry = next(e for e in verdict["cases"] if e["case"] == CASE)
    assert entry["between_runs"]["spread_pct"] == pytest.approx(8.0)
    assert entry["anchored"]["between_runs"] == {"runs": 3, "spread_pct": pytest.approx(0.0, abs=1e-9)}
    assert verdict["spread_over_threshold"] == []  # ratio mode decides on the anchored spread


@pytest.mark.parametrize("threshold, noted", [(5.0, True), (12.0, False)])
def test_the_verdict_notes_a_threshold_tighter_than_the_runs_spread(refs, threshold, noted):
    store_all([1.0, 1.1, 1.05])
    verdict = gate.compare(gate._load(refs), run_of(9, 1.05), threshold_pct=threshold)
    assert (CASE in verdict["spread_over_threshold"]) is noted
    assert ANCHOR not in verdict["spread_over_threshold"]
    warning = verdict["warning"] or ""
    assert ("the threshold is tighter than the runs' own spread" in warning) is noted
    assert (f"{CASE} 10.0% over 3 runs vs threshold 5%" in warning) is noted
    assert verdict["exit_code"] == 0  # a note, not an outcome


def test_summary_shows_the_spread_next_to_the_ci(refs):
    store_all([1.0, 1.1, 1.05])
    summary = gate.summary_markdown(gate.compare(gate._load(refs), run_of(9, 1.05)))
    lines = summary.splitlines()
    header = next(line for line in lines if line.startswith("| Case |")).split("|")
    assert header.index(" Between runs ") == header.index(" CI ") + 1
    assert header.index(" Between runs vs anchor ") == header.index(" CI vs anchor ") + 1
    cells = next(line for line in lines if f"`{CASE}`" in line).split("|")
    assert cells[header.index(" Between runs ")].strip() == "10.0% (3 runs)"
    assert "over the reference's 3 runs (`run-0`, `run-1`, `run-2`)" in summary


def test_the_report_shows_the_spread_next_to_the_ci(refs, tmp_path):
    from reports.run import Run
    from reports.sections import compare as section

    store_all([1.0, 1.1, 1.05])
    candidate = write_run(tmp_path / "cand", run_of(9, 1.05))
    verdict = gate.compare(gate._load(refs), gate._load(candidate))
    shown = section.section(Run.load(candidate), Run.load(refs), verdict)
    table = next(block for block in shown.blocks if block.kind == "table")
    column = table.headings.index("between-run spread")
    assert column == table.headings.index("95 % CI of ratio") + 1
    assert {r[0]: r[column] for r in table.rows}[CASE] == "10.0 % (3 runs)"
    rule = dict(next(block for block in shown.blocks if block.kind == "definitions").items)
    assert "3 runs: run-0, run-1, run-2" in rule["between runs"]
