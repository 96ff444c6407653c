"""Stored references and their history: the between-run spread the verdict shows next to each case's CI.

A stored reference (``suites/references/<gpu-slug>/<suite>.json``, `store_reference`) is one whole run (raw
samples included: the gate bootstraps from them) plus ``stored_reference``: ``source``, ``stored``,
``forced`` and ``history``, the per-case medians of the newest `KEEP` runs stored for that GPU model and
suite, oldest first, this run last. Each entry is ``{"run_id", "created", "source", "medians": {case: ms}}``
with the median of every ok kernel and e2e row (the anchors too, so that a case's ratio to its anchor can
be formed run by run).

Storing a run carries the previous reference's history forward (a reference stored before histories
existed counts as one entry: its own medians), then adds the runs given with ``--history`` (oldest first),
then the stored run itself; a run already in the history (same run id) is not counted twice. A previous
reference that is not comparable (another driver, other problems) starts the history again, saying so.

The bootstrap CI of a case says how well one run pinned its median down; `between_runs` says how far the
medians of separate runs on this card lie apart: ``{"runs": n, "spread_pct": (max / min - 1) * 100, or null
with n < 2}``. A threshold below that spread can fail a merge on run-to-run variation alone
(`spread_warning`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.apps.gate import inputs
from harness.apps.gate.ratio import median_of

KEEP = 5  # runs a stored reference's history holds


# ---- one run's entry, and a reference's history -------------------------------------------------------------

def medians(results: Mapping, source: str) -> dict[str, float]:
    """case id -> median ms of every ok kernel and e2e row of a run (`ratio.median_of`)."""
    rows = inputs.gated_rows(results, source)
    found = {case: median_of(row) for case, row in rows.items() if row.get("status") == "ok"}
    return {case: float(ms) for case, ms in found.items() if ms is not None}


def run_entry(results: Mapping, source: str) -> dict:
    """One run's history entry: its id, when it was made, where it came from, and its per-case medians."""
    return {"run_id": results.get("run_id"), "created": results.get("created"), "source": source,
            "medians": medians(results, source)}


def _check_entry(entry, where: str) -> None:
    meds = entry.get("medians") if isinstance(entry, Mapping) else None
    if not isinstance(meds, Mapping):
        raise ValueError(f"{where}: expected an object with 'medians' (case id -> ms), got {entry!r:.80}")
    for case, ms in meds.items():
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"{where}.medians[{case!r}]: {ms!r} is not a positive number of milliseconds")


def history_of(reference: Mapping, source: str = "the reference") -> list[dict]:
    """The reference's history, oldest first. A run without one (stored before histories existed, or a
    plain results file) is a history of one: its own medians. ValueError names a malformed entry."""
    stored = reference.get("stored_reference") or {}
    history = stored.get("history") if isinstance(stored, Mapping) else None
    if history is None:
        return [run_entry(reference, source)]
    if not isinstance(history, list):
        raise ValueError(f"{source}: stored_reference.history: expected a list, got {history!r:.60}")
    for i, entry in enumerate(history):
        _check_entry(entry, f"{source}: stored_reference.history[{i}]")
    return list(history)


def newest(entries: Sequence[Mapping], keep: int = KEEP) -> list[dict]:
    """The newest ``keep`` entries, oldest first; of two with one run id (a run stored twice), the later."""
    seen, kept = set(), []
    for entry in reversed(entries):
        if entry.get("run_id") not in seen:
            seen.add(entry.get("run_id"))
            kept.append(dict(entry))
    return kept[:keep][::-1]


# ---- between runs ---------------------------------------------------------------------------------------

def spread(values: Sequence[float]) -> dict:
    """``{"runs": n, "spread_pct": (max / min - 1) * 100}``; ``spread_pct`` is None with fewer than 2 values."""
    pct = (max(values) / min(values) - 1.0) * 100.0 if len(values) >= 2 else None
    return {"runs": len(values), "spread_pct": pct}


def between_runs(history: Sequence[Mapping], case: str, anchor: str | None = None) -> dict:
    """`spread` of ``case``'s median over the history's runs that have it; with ``anchor``, of its ratio to
    the anchor's median, run by run (runs that have both)."""
    if anchor is None:
        return spread([h["medians"][case] for h in history if case in h["medians"]])
    return spread([h["medians"][case] / h["medians"][anchor] for h in history
                   if case in h["medians"] and anchor in h["medians"]])


def add_between_runs(entry: dict, history: Sequence[Mapping]) -> None:
    """Set a verdict entry's ``between_runs`` (and, when it has an anchor, ``anchored.between_runs``)."""
    entry["between_runs"] = between_runs(history, entry["case"])
    anchored = entry.get("anchored")
    if anchored and anchored.get("anchor"):
        anchored["between_runs"] = between_runs(history, entry["case"], anchored["anchor"])


def deciding_spread(entry: Mapping, mode: str) -> dict:
    """The between-run spread of the numbers the outcome rests on (as `ratio.deciding_ratio`)."""
    anchored = (entry.get("anchored") or {}).get("between_runs")
    return anchored if mode != "absolute" and anchored else entry.get("between_runs") or {}


def over_threshold(cases: Sequence[Mapping], mode: str) -> list[str]:
    """The cases whose between-run spread is larger than their threshold."""
    return [e["case"] for e in cases
            if (deciding_spread(e, mode).get("spread_pct") or 0.0) > e["threshold_pct"]]


def spread_warning(cases: Sequence[Mapping], mode: str) -> str | None:
    """The verdict's note on the cases whose threshold is tighter than the runs' own spread."""
    by_case = {e["case"]: e for e in cases}
    named = []
    for case in over_threshold(cases, mode):
        between = deciding_spread(by_case[case], mode)
        named.append(f"{case} {between['spread_pct']:.1f}% over {between['runs']} runs vs threshold "
                     f"{by_case[case]['threshold_pct']:g}%")
    if not named:
        return None
    return (f"Between-run spread above the threshold ({'; '.join(named)}): the threshold is tighter than the "
            "runs' own spread, so a change of that size can come from run-to-run variation alone.")


# ---- the verdict's words ---------------------------------------------------------------------------------

def spread_cell(between: Mapping | None) -> str:
    """``4.2% (3 runs)``, ``1 run`` (no spread with one), or empty."""
    if not between or not between.get("runs"):
        return ""
    runs = between["runs"]
    if between.get("spread_pct") is None:
        return f"{runs} run" + ("s" if runs > 1 else "")
    return f"{between['spread_pct']:.1f}% ({runs} runs)"


def history_summary(history: Sequence[Mapping]) -> dict:
    """The verdict's ``history``: how many of the reference's stored runs the spreads come from, and which."""
    return {"runs": len(history), "keep": KEEP, "run_ids": [h.get("run_id") for h in history]}


def history_line(verdict: Mapping) -> str:
    """The summary's line on where the between-run spreads come from."""
    history = verdict.get("history") or {}
    ids = ", ".join(f"`{run_id}`" for run_id in history.get("run_ids") or ())
    if history.get("runs", 0) < 2:
        return (f"- Between runs: the reference holds one run ({ids or 'none'}), so no between-run spread; a stored "
                f"reference keeps its last {KEEP} runs' medians (`--update-reference`, `--history`)")
    return (f"- Between runs: the spread (max / min − 1) of each case's median over the reference's "
            f"{history['runs']} runs ({ids}); a spread above the threshold is noted")


# ---- storing -------------------------------------------------------------------------------------------

def _carried(path: Path, candidate: Mapping, cand_rows: Mapping, force: bool) -> tuple[list[dict], str | None]:
    """The history of the reference stored at ``path`` to carry forward, and a note when none is carried."""
    from harness.core.results import load_results

    if not path.exists():
        return [], None
    try:
        previous = load_results(path)
        why = inputs.mismatches(previous, candidate, inputs.gated_rows(previous, str(path)), cand_rows)
        if why and not force:
            return [], f"the history of the previous reference (run {previous.get('run_id')}) starts again: {why[0]}"
        return history_of(previous, str(path)), None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return [], f"the previous reference {path} could not be read ({exc}): its history starts again"


def _seeded(runs: Sequence[tuple[Mapping, str]], candidate: Mapping, cand_rows: Mapping, force: bool) -> list[dict]:
    """History entries of the ``(results, source)`` runs given with ``--history``; ValueError for a run that
    is not comparable with the candidate (unless ``force``) or has no ok case."""
    entries = []
    for results, source in runs:
        why = inputs.mismatches(results, candidate, inputs.gated_rows(results, source), cand_rows)
        if why and not force:
            raise ValueError(f"--history {source}: {why[0]}")
        entry = run_entry(results, source)
        if not entry["medians"]:
            raise ValueError(f"--history {source}: not a single ok kernel or e2e case")
        entries.append(entry)
    return entries


def store_reference(candidate: Mapping, source: str, force: bool = False,
                    history: Sequence[tuple[Mapping, str]] = ()) -> tuple[Path, list[dict], str | None]:
    """Copy a candidate run into its stored-reference place with its history (the previous reference's,
    then ``history``'s ``(results, source)`` runs, oldest first, then the candidate; the newest `KEEP`).
    Refuses (ValueError, saying why) a run that could not gate anything, and, unless ``force``, one that is
    incomplete or has failed cases, or a ``history`` run of another card or other problems. Returns the
    path, the history stored, and a note when the previous history was not carried."""
    cand_rows = inputs.gated_rows(candidate, "the candidate")
    always, unless_forced = inputs.storage_refusals(candidate, cand_rows)
    refusals = always + ([] if force else unless_forced)
    if refusals:
        hint = " (pass --force to store it anyway)" if not always else ""
        raise ValueError(f"not storing run {candidate.get('run_id')} as a reference: {'; '.join(refusals)}{hint}")
    from harness.core.results import utc_now, write_json_atomic

    path = inputs.stored_reference_path(candidate)
    seeded = _seeded(history, candidate, cand_rows, force)
    carried, note = _carried(path, candidate, cand_rows, force)
    kept = newest([*carried, *seeded, run_entry(candidate, source)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**candidate, "stored_reference": {
        "source": source, "stored": utc_now(), "forced": unless_forced if force else [], "history": kept}})
    return path, kept, note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's options for storing a reference: ``--update-reference`` and ``--history``."""
    parser.add_argument("--update-reference", action="store_true",
                        help="store the candidate as the reference for its GPU model and suite, keeping the "
                             f"per-case medians of the last {KEEP} runs stored there (the previous reference's "
                             "history, the --history runs, this one) for the between-run spread")
    parser.add_argument("--history", nargs="+", default=[], metavar="DIR",
                        help="with --update-reference: earlier runs of the same suite on this card (results dirs "
                             "or files, oldest first) whose per-case medians join the stored history, e.g. "
                             "--candidate results/run3 --update-reference --history results/run1 results/run2")
