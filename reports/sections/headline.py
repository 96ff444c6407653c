"""HilbertA's variants against every dense kernel timed, per resolution (the first screen names only the fastest).

The paper (arXiv 2509.26538) does not name the dense kernel its speedups were measured against, so every
dense kernel timed here gets a column; the fastest of them is the honest denominator. Fraction of ideal =
fastest dense time x token density / HilbertA time (1.0 = as efficient per computed pair as the best dense
kernel). Every time is on `reports.rows.PHASE_BASIS`.
"""

from __future__ import annotations

import pandas as pd

from reports.blocks import Paragraph, Section
from reports.formatting import fmt_int, fmt_interval, fmt_ms, fmt_pct, fmt_ratio
from reports.rows import INTERVAL_RULE, PHASE_BASIS, method_summary, resolution_order, timed_kernels
from reports.run import Run
from reports.sections.common import reason_summary
from reports.speedups import hilberta_rows
from reports.tables import Column, build_table

ID, TITLE = "headline", "HilbertA variants vs every dense kernel"
BASELINE_CAVEAT = (
    "The paper does not name its dense baseline (its public code times PyTorch SDPA with whatever backend "
    "PyTorch picks), so every dense kernel timed here has a column; the fastest one is the fair denominator.")


def _speedup_frame(hilberta: pd.DataFrame, dense: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (resolution, HilbertA method) with a ``vs:<dense label>`` speedup column per dense kernel."""
    dense_labels = list(dict.fromkeys(dense["label"]))
    dense_ms = dense.set_index(["resolution", "label"])["median_ms"]
    records = []
    for row in hilberta.to_dict("records"):
        record = {**row, "ideal": 1 / row["token_density"],
                  "ci": fmt_interval(row["ci_lo_ms"], row["ci_hi_ms"])}
        for label in dense_labels:
            record[f"vs:{label}"] = dense_ms.get((row["resolution"], label), float("nan")) / row["median_ms"]
        records.append(record)
    return pd.DataFrame.from_records(records), dense_labels


def section(run: Run) -> Section:
    frame = run.frame
    kernel_rows = frame[(frame["kind"] == "kernel") & hilberta_rows(frame)]
    if kernel_rows.empty:
        return Section.empty(ID, TITLE, "No HilbertA kernel rows (category 'hilberta') in this run.")
    summary = method_summary(timed_kernels(frame))
    hilberta = summary[hilberta_rows(summary)]
    dense = summary[summary["dense_reference"]]
    if hilberta.empty:
        return Section.empty(ID, TITLE, "No HilbertA row passed correctness with a timing: "
                             f"{reason_summary(kernel_rows, 'reason') or 'no reason given'}.")
    if dense.empty:
        return Section.empty(ID, TITLE, "No dense reference kernel was timed in this run, so there is no "
                             "speedup to report.")
    order = {res: i for i, res in enumerate(resolution_order(frame))}
    hilberta = hilberta.sort_values(["resolution", "median_ms"], key=lambda s: s.map(order) if s.name == "resolution"
                                    else s, kind="stable")
    table, dense_labels = _speedup_frame(hilberta, dense)
    columns = [
        Column("resolution", "resolution"), Column("label", "HilbertA variant"),
        Column("phases", "phases", fmt_int, numeric=True, tip="sliding phases (layers) averaged"),
        Column("median_ms", "ms per call", fmt_ms, numeric=True, tip=PHASE_BASIS),
        Column("ci", "95 % CI (ms)", tip=INTERVAL_RULE),
        *(Column(f"vs:{label}", f"speedup vs {label}", fmt_ratio, numeric=True, tip=f"{label} ms / HilbertA ms")
          for label in dense_labels),
        Column("token_density", "token density", fmt_pct, numeric=True, tip="allowed (query, key) pairs / L²"),
        Column("ideal", "ideal speedup", fmt_ratio, numeric=True, tip="1 / token density"),
        Column("fraction_of_ideal", "fraction of ideal", fmt_pct, numeric=True,
               tip="fastest dense ms x token density / HilbertA ms"),
    ]
    result = Section(ID, TITLE)
    result.add(build_table(table, columns, caption=f"Measured on {run.card or 'a card whose name was not recorded'}; "
                                                   "fastest variant first at each size."))
    result.add(Paragraph(BASELINE_CAVEAT, css="caveat"))
    return result
