"""Compare mode: this run (the candidate) against a reference run, case by case, coloured by outcome.

Outcomes come from `harness.apps.gate.compare.compare` (ratio of medians with a bootstrap CI and a Mann-Whitney test),
imported only here and only when a comparison is asked for. Without the gate, or when it refuses the
pair (different GPU model or driver), the section shows plain ratios of medians and says they are not
judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_float, fmt_interval, fmt_ms, fmt_signed_pct
from reports.run import Run
from reports.tables import Column, build_table

ID, TITLE = "compare", "Comparison with a reference run"
THRESHOLD_PCT = 5.0
NOT_JUDGED = "not judged"
GATE_FIELDS = ["case", "outcome", "ratio", "ci_lo", "ci_hi", "p_value", "ref_median_ms", "cand_median_ms", "reason"]

COLUMNS = [
    Column("case", "case"),
    Column("reference_ms", "reference median ms", fmt_ms, numeric=True),
    Column("candidate_ms", "candidate median ms", fmt_ms, numeric=True),
    Column("delta", "change", fmt_signed_pct, numeric=True),
    Column("ratio", "ratio (cand / ref)", fmt_float, numeric=True),
    Column("ratio_ci", "95 % CI of ratio", numeric=True),
    Column("p_value", "p-value", fmt_float, numeric=True),
    Column("outcome", "outcome"),
    Column("reason", "note"),
]


def gate_compare() -> Callable | None:
    """`harness.apps.gate.compare.compare`, or None when the harness gate is not importable here."""
    try:
        from harness.apps.gate.compare import compare
    except ImportError:
        return None
    return compare


def _medians(run: Run) -> pd.Series:
    timed = run.frame[run.frame["median_ms"].notna()]
    return timed.drop_duplicates("case").set_index("case")["median_ms"]


def _gate_frame(verdict: Mapping) -> pd.DataFrame:
    records = []
    for case in verdict.get("cases", []):
        ci = case.get("ci") or [None, None]
        records.append({**{key: case.get(key) for key in GATE_FIELDS}, "case": str(case.get("case")),
                        "outcome": str(case.get("outcome")), "ci_lo": ci[0], "ci_hi": ci[1]})
    return pd.DataFrame.from_records(records, columns=GATE_FIELDS)


def _plain_ratio_frame(reference: pd.Series, candidate: pd.Series) -> pd.DataFrame:
    common = reference.index.intersection(candidate.index)
    frame = pd.DataFrame({"case": common, "ratio": (candidate[common] / reference[common]).to_numpy()},
                         columns=GATE_FIELDS)
    return frame.assign(outcome=NOT_JUDGED)


def _judged(run: Run, reference: Run, result: Section) -> pd.DataFrame | None:
    """The gate's per-case frame, or None (with a note in ``result``) when there is no usable verdict."""
    compare = gate_compare()
    if compare is None:
        result.add(Paragraph("harness.apps.gate.compare is not available here: plain ratios of medians, without a "
                             "confidence interval or significance test, and no verdict.", css="warning"))
        return None
    try:
        verdict = compare(reference.results, run.results, threshold_pct=THRESHOLD_PCT)
    except ValueError as exc:  # the gate rejects malformed input; the rest of the report still stands
        result.add(Paragraph(f"The gate could not compare these runs: {exc}", css="warning"))
        return None
    message = str(verdict.get("message") or f"gate verdict: {verdict.get('verdict')}")
    failed = verdict.get("exit_code") != 0
    result.add(Paragraph(f"{message} (exit code {verdict.get('exit_code')}).", css="warning" if failed else "ok"))
    if verdict.get("warning"):
        result.add(Paragraph(str(verdict["warning"]), css="warning"))
    if verdict.get("verdict") == "refused":
        result.add(Paragraph("Below: plain ratios of medians, not judged.", css="note"))
        return None
    return _gate_frame(verdict)


def section(run: Run, reference: Run | None) -> Section:
    if reference is None:
        return Section.empty(ID, TITLE, "No reference run given (build with compare_dir, or "
                             "`python -m harness report DIR --compare REFERENCE_DIR`).")
    result = Section(ID, TITLE)
    result.add(Paragraph(f"Candidate: {run.name} on {run.card or 'an unrecorded card'}. "
                         f"Reference: {reference.name} on {reference.card or 'an unrecorded card'}."))
    if run.card != reference.card:
        result.add(Paragraph("The two runs were not recorded on the same card: timings are not comparable.",
                             css="warning"))
    ref_ms, cand_ms = _medians(reference), _medians(run)
    deltas = _judged(run, reference, result)
    if deltas is None:
        deltas = _plain_ratio_frame(ref_ms, cand_ms)
    if deltas.empty:
        result.add(Paragraph("The two runs share no timed case.", css="note"))
        return result
    # the gate's medians (recomputed from raw samples) where it gave them, else the rows' own
    for column, gate_column, medians in (("reference_ms", "ref_median_ms", ref_ms),
                                         ("candidate_ms", "cand_median_ms", cand_ms)):
        deltas[column] = pd.to_numeric(deltas[gate_column].fillna(deltas["case"].map(medians)), errors="coerce")
    deltas["ratio"] = pd.to_numeric(deltas["ratio"], errors="coerce")
    deltas["delta"] = deltas["ratio"] - 1
    deltas["ratio_ci"] = [fmt_interval(lo, hi, fmt_float) for lo, hi in zip(deltas["ci_lo"], deltas["ci_hi"])]
    tally = Counter(deltas["outcome"])
    caption = "Per case: " + ", ".join(f"{count} {name}" for name, count in tally.most_common())
    result.add(build_table(deltas, COLUMNS, caption=caption, row_class=lambda record: f"outcome-{record['outcome']}"))
    plotted = deltas.dropna(subset=["delta"])
    if not plotted.empty:
        result.add_figure(figures.compare_deltas(plotted))
    return result
