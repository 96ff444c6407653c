"""Compare mode: this run (the candidate) against a reference run, shown with the gate's own verdict.

The verdict is the dict the gate writes as ``verdict.json`` (harness/apps/gate/compare.py: "verdict",
"exit_code", "message", "warning", "threshold_pct", "per_case_thresholds", "alpha", "level", "cases" with
"outcome", "ratio", "ci", "between_runs", "p_value", "ref_median_ms", "cand_median_ms", "threshold_pct",
"reason"; "history": the reference's stored runs that "between_runs" spans). It is rendered as it is:
same outcomes, same thresholds; the report never re-judges. Without a verdict (or when the gate refused the
pair) the section shows plain ratios of medians and says they are not judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pandas as pd

from reports import figures
from reports.blocks import Definitions, Paragraph, Section
from reports.formatting import MISSING, fmt_float, fmt_interval, fmt_ms, fmt_signed_pct, fmt_text
from reports.run import Run
from reports.tables import Column, build_table

ID, TITLE = "compare", "Comparison with a reference run"
NOT_JUDGED = "not judged"
CASE_FIELDS = ["case", "outcome", "ratio", "ci_lo", "ci_hi", "between_runs", "p_value", "ref_median_ms",
               "cand_median_ms", "threshold_pct", "reason"]

COLUMNS = [
    Column("case", "case"),
    Column("reference_ms", "reference median ms", fmt_ms, numeric=True),
    Column("candidate_ms", "candidate median ms", fmt_ms, numeric=True),
    Column("delta", "change", fmt_signed_pct, numeric=True, tip="candidate median / reference median − 1"),
    Column("ratio_ci", "95 % CI of ratio", tip="the gate's bootstrap interval of candidate / reference"),
    Column("between_runs", "between-run spread",
           tip="max / min − 1 of this case's median over the reference's stored runs (the gate's between_runs)"),
    Column("p_value", "p-value", fmt_float, numeric=True, tip="the gate's Mann-Whitney U test"),
    Column("threshold_pct", "threshold %", fmt_float, numeric=True, tip="the gate's threshold for this case"),
    Column("outcome", "outcome"),
    Column("reason", "note"),
]


def check_verdict(verdict: object) -> Mapping:
    """``verdict`` if it has the shape of the gate's verdict.json, else ValueError naming the field."""
    if not isinstance(verdict, Mapping):
        raise ValueError(f"verdict: expected the gate's verdict.json object, got {type(verdict).__name__}")
    if not isinstance(verdict.get("verdict"), str):
        raise ValueError("verdict: field 'verdict' (pass | fail | refused) is missing")
    if not isinstance(verdict.get("cases"), list) or not all(isinstance(c, Mapping) for c in verdict["cases"]):
        raise ValueError("verdict: field 'cases' is not a list of case objects")
    return verdict


def _medians(run: Run) -> pd.Series:
    timed = run.frame[run.frame["median_ms"].notna()]
    return timed.drop_duplicates("case").set_index("case")["median_ms"]


def fmt_between_runs(between: object) -> str:
    """The gate's ``between_runs`` of a case: ``3.0 % (3 runs)``, ``1 run`` (no spread), or MISSING."""
    if not isinstance(between, Mapping) or not between.get("runs"):
        return MISSING
    runs, pct = between["runs"], between.get("spread_pct")
    return f"{runs} run{'s' if runs != 1 else ''}" if pct is None else f"{fmt_float(pct)} % ({runs} runs)"


def _verdict_frame(verdict: Mapping) -> pd.DataFrame:
    records = []
    for case in verdict["cases"]:
        ci = case.get("ci") if isinstance(case.get("ci"), list) and len(case["ci"]) == 2 else [None, None]
        records.append({**{key: case.get(key) for key in CASE_FIELDS}, "case": str(case.get("case")),
                        "outcome": str(case.get("outcome")), "ci_lo": ci[0], "ci_hi": ci[1],
                        "between_runs": fmt_between_runs(case.get("between_runs"))})
    return pd.DataFrame.from_records(records, columns=CASE_FIELDS)


def _plain_ratio_frame(reference: pd.Series, candidate: pd.Series) -> pd.DataFrame:
    common = reference.index.intersection(candidate.index)
    frame = pd.DataFrame({"case": common, "ratio": (candidate[common] / reference[common]).to_numpy()},
                         columns=CASE_FIELDS)
    return frame.assign(outcome=NOT_JUDGED)


def _rule(verdict: Mapping) -> Definitions:
    overrides = verdict.get("per_case_thresholds") or {}
    items = [("verdict", f"{verdict['verdict']} (exit code {fmt_text(verdict.get('exit_code'))})"),
             ("threshold", f"{fmt_text(verdict.get('threshold_pct'))} %"
                           + (" ; per case: " + ", ".join(f"{k}: {v} %" for k, v in overrides.items())
                              if overrides else "")),
             ("rule", f"regression when the whole {fmt_text(verdict.get('level'))} CI of the median ratio is above "
                      f"1 + threshold and Mann-Whitney p < {fmt_text(verdict.get('alpha'))}")]
    if verdict.get("allow_missing"):
        items.append(("allowed missing", fmt_text(verdict["allow_missing"])))
    history = verdict.get("history")
    if isinstance(history, Mapping):
        run_ids = ", ".join(map(str, history.get("run_ids") or []))
        items.append(("between runs", f"spread of each case's median over the reference's "
                                      f"{fmt_text(history.get('runs'))} runs: {fmt_text(run_ids)}"))
    return Definitions(items, caption="The gate's verdict, as it wrote it")


def _judged(verdict: Mapping | None, result: Section) -> pd.DataFrame | None:
    """The verdict's per-case frame, or None (with a note in ``result``) when there is nothing judged."""
    if verdict is None:
        result.add(Paragraph("No gate verdict was given: plain ratios of medians, not judged (the gate's "
                             "verdict.json, or `python -m harness report DIR --compare REF`, judges them).",
                             css="warning"))
        return None
    failed = verdict.get("exit_code") != 0
    result.add(Paragraph(fmt_text(verdict.get("message") or f"gate verdict: {verdict['verdict']}"),
                         css="bad" if failed else "ok"))
    if verdict.get("warning"):
        result.add(Paragraph(fmt_text(verdict["warning"]), css="warning"))
    if verdict["verdict"] == "refused":
        result.add(Paragraph("The gate refused the pair. Below: plain ratios of medians, not judged.", css="note"))
        return None
    result.add(_rule(verdict))
    return _verdict_frame(verdict)


def section(run: Run, reference: Run | None, verdict: Mapping | None = None) -> Section:
    if reference is None and verdict is None:
        return Section.empty(ID, TITLE, "No reference run given (build with compare_dir, or "
                             "`python -m harness report DIR --compare REFERENCE_DIR`).")
    result = Section(ID, TITLE)
    if reference is not None:
        result.add(Paragraph(f"Candidate: {run.name} on {run.card or 'an unrecorded card'}. "
                             f"Reference: {reference.name} on {reference.card or 'an unrecorded card'}."))
        if run.card != reference.card:
            result.add(Paragraph("The two runs were not recorded on the same card: timings are not comparable.",
                                 css="warning"))
    ref_ms = _medians(reference) if reference is not None else pd.Series(dtype=float)
    cand_ms = _medians(run)
    deltas = _judged(verdict, result)
    if deltas is None:
        deltas = _plain_ratio_frame(ref_ms, cand_ms)
    if deltas.empty:
        result.add(Paragraph("The two runs share no timed case.", css="note"))
        return result
    # the gate's medians (from raw samples) where it gave them, else the rows' own
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
