"""Headline: HilbertA's speedup over each dense kernel per resolution, beside the paper's claims.

The paper (arXiv 2509.26538) claims an attention speedup of 2.3x at 1024x1024 and 4.17x at 2048x2048 on
Flux.1-dev without naming the dense kernel it was measured against, so the table quotes every dense
reference timed here; the fastest of them is the honest denominator. Fraction of ideal = fastest dense
time x token density / HilbertA time (1.0 = as efficient per computed pair as the best dense kernel).
"""

from __future__ import annotations

import pandas as pd

from reports.blocks import Paragraph, Section
from reports.formatting import fmt_int, fmt_ms, fmt_pct, fmt_ratio
from reports.rows import method_summary, resolution_order, timed_kernels
from reports.run import Run
from reports.sections.common import reason_summary
from reports.tables import Column, build_table

ID, TITLE = "headline", "Headline: HilbertA vs dense attention"
HILBERTA_FAMILY = "hilberta"
PAPER_CLAIMS = {"1024x1024": 2.3, "2048x2048": 4.17}  # attention speedup, Flux.1-dev, dense baseline unnamed
BASELINE_CAVEAT = (
    "The paper does not name its dense baseline (its public code times PyTorch SDPA with whatever backend "
    "PyTorch picks), so its claims sit beside every dense kernel timed here; the fastest one is the fair "
    "denominator. Speedups use medians; a method timed at several layers is averaged over its sliding phases."
)


def _speedup_frame(hilberta: pd.DataFrame, dense: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (resolution, HilbertA method) with a ``vs:<dense label>`` speedup column per dense kernel."""
    dense_labels = list(dict.fromkeys(dense["label"]))
    dense_ms = dense.set_index(["resolution", "label"])["median_ms"]
    records = []
    for row in hilberta.to_dict("records"):
        record = {**row, "claim": PAPER_CLAIMS.get(row["resolution"]), "ideal": 1 / row["token_density"]}
        for label in dense_labels:
            record[f"vs:{label}"] = dense_ms.get((row["resolution"], label), float("nan")) / row["median_ms"]
        records.append(record)
    return pd.DataFrame.from_records(records), dense_labels


def _sentence(row: dict, card: str) -> str:
    claim = PAPER_CLAIMS.get(row["resolution"])
    claim_text = f"the paper claims {fmt_ratio(claim)}" if claim else "the paper makes no claim at this size"
    return (f"{row['resolution']}: the fastest HilbertA variant, {row['label']}, takes "
            f"{fmt_ms(row['median_ms'])} ms per call, "
            f"{fmt_ratio(row['speedup'])} the speed of the fastest dense kernel on {card} "
            f"({row['fastest_dense_label']}, {fmt_ms(row['fastest_dense_ms'])} ms); {claim_text}. "
            f"That is {fmt_pct(row['fraction_of_ideal'])} of the ideal for its density "
            f"({fmt_pct(row['token_density'])}).")


def section(run: Run) -> Section:
    frame = run.frame
    hilberta_rows = frame[(frame["kind"] == "kernel") & (frame["family"] == HILBERTA_FAMILY)]
    if hilberta_rows.empty:
        return Section.empty(ID, TITLE, "No HilbertA kernel rows (family 'hilberta') in this run.")
    summary = method_summary(timed_kernels(frame))
    hilberta = summary[summary["family"] == HILBERTA_FAMILY]
    dense = summary[summary["dense_reference"]]
    if hilberta.empty:
        return Section.empty(ID, TITLE, "No HilbertA row passed correctness with a timing: "
                             f"{reason_summary(hilberta_rows, 'reason') or 'no reason given'}.")
    if dense.empty:
        return Section.empty(ID, TITLE, "No dense reference kernel was timed in this run, so there is no "
                             "speedup to report.")
    order = {res: i for i, res in enumerate(resolution_order(frame))}
    hilberta = hilberta.sort_values("resolution", key=lambda s: s.map(order), kind="stable")
    card = run.card or "this card (name not recorded)"
    result = Section(ID, TITLE)
    best = hilberta.loc[hilberta.groupby("resolution", sort=False)["median_ms"].idxmin()]
    for row in best.dropna(subset=["speedup"]).to_dict("records"):
        result.add(Paragraph(_sentence(row, card), css="headline"))
    table, dense_labels = _speedup_frame(hilberta, dense)
    columns = [
        Column("resolution", "resolution"), Column("label", "HilbertA method"),
        Column("phases", "phases", fmt_int, numeric=True),
        Column("median_ms", "median ms", fmt_ms, numeric=True),
        *(Column(f"vs:{label}", f"speedup vs {label}", fmt_ratio, numeric=True) for label in dense_labels),
        Column("claim", "paper's claim", fmt_ratio, numeric=True),
        Column("token_density", "token density", fmt_pct, numeric=True),
        Column("ideal", "ideal speedup (1 / density)", fmt_ratio, numeric=True),
        Column("fraction_of_ideal", "fraction of ideal", fmt_pct, numeric=True),
    ]
    result.add(build_table(table, columns, caption=f"Measured on {card}."))
    result.add(Paragraph(BASELINE_CAVEAT, css="caveat"))
    return result
