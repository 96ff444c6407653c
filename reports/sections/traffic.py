"""Memory traffic: DRAM bytes per call against the compulsory bytes, and a roofline with the run's ceilings.

Ceilings come from `reports.ceilings` (measured in the run, else the datasheet scaled by the SM clock under
load; the caption says which). Arithmetic intensity = effective (unmasked) FLOPs / DRAM bytes read and
written (filled points) and / L2 bytes (open points). Timed methods missing from the roofline are listed
with the reason.
"""

from __future__ import annotations

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.ceilings import ceilings
from reports.formatting import fmt_bytes, fmt_gbps, fmt_ms, fmt_ratio, fmt_text
from reports.rows import timed_kernels
from reports.run import Run
from reports.sections.common import CASE_COLUMNS, missing_measurement_note
from reports.tables import Column, build_table

ID, TITLE = "traffic", "Memory traffic and roofline"

COLUMNS = [
    *CASE_COLUMNS,
    Column("dram_read_bytes", "DRAM read", fmt_bytes, numeric=True),
    Column("dram_write_bytes", "DRAM written", fmt_bytes, numeric=True),
    Column("dram_bytes", "DRAM total", fmt_bytes, numeric=True),
    Column("compulsory_bytes", "compulsory", fmt_bytes, numeric=True, tip="Q, K, V read and O written once"),
    Column("excess", "total / compulsory", fmt_ratio, numeric=True,
           tip="DRAM bytes / compulsory bytes: 1× is the floor; far above means K/V re-read from DRAM"),
    Column("l2_bytes", "L2 traffic", fmt_bytes, numeric=True, tip="bytes through L2 (ncu lts__t_bytes)"),
    Column("ncu_kernel_ms", "kernel ms (under ncu)", fmt_ms, numeric=True,
           tip="ncu replay with a cold L2: for bandwidth only, not a latency"),
    Column("achieved_dram_gbps", "achieved DRAM bandwidth", fmt_gbps, numeric=True,
           tip="DRAM bytes / kernel time under ncu"),
]


def _absent(timed: pd.DataFrame, plotted: pd.Series) -> str:
    """Timed methods that are not on the roofline, each with why."""
    on_chart = set(zip(timed.loc[timed["case"].isin(plotted), "resolution"], timed.loc[timed["case"].isin(plotted), "method"]))
    missing = timed[[key not in on_chart for key in zip(timed["resolution"], timed["method"])]]
    reasons = []
    for record in missing.drop_duplicates(["resolution", "method"]).to_dict("records"):
        if pd.isna(record["dram_bytes"]):
            why = f"no ncu traffic ({fmt_text(record['traffic_reason'] or 'not captured for this case')})"
        else:
            why = "no effective FLOP count or throughput"
        reasons.append(f"{record['label']} at {record['resolution']}: {why}")
    return "; ".join(reasons)


def section(run: Run) -> Section:
    frame = run.frame
    measured = frame[frame["dram_bytes"].notna()].copy()
    if measured.empty:
        return Section.empty(ID, TITLE, missing_measurement_note(
            frame, "DRAM traffic (ncu)", "traffic_status", "traffic_reason"))
    measured["excess"] = measured["dram_bytes"] / measured["compulsory_bytes"]
    result = Section(ID, TITLE)
    result.add(build_table(measured, COLUMNS, caption="DRAM and L2 bytes of one call, from ncu"))
    result.add_figure(figures.traffic_bars(measured.dropna(subset=["compulsory_bytes"])))
    points = measured.dropna(subset=["effective_flops", "tflops_effective"])
    points = points[points["dram_bytes"] > 0].assign(intensity=lambda f: f["effective_flops"] / f["dram_bytes"],
                                                     l2_intensity=lambda f: f["effective_flops"] / f["l2_bytes"])
    if points.empty:
        result.add(Paragraph("No row has both DRAM bytes and effective TFLOP/s: no roofline.", css="note"))
        return result
    ceiling = ceilings(run.results, frame)
    if ceiling is None:
        caption = (f"No roofs drawn: the run measured no ceilings and the card ({run.card or 'not recorded'}) "
                   "is not in the datasheet table.")
    else:
        caption = f"Compute and DRAM roofs: {ceiling.source}."
        caption += f" {ceiling.l2_source}." if ceiling.l2_source else " No L2 roof: no L2 bytes recorded."
    caption += " Achieved TFLOP/s: effective FLOPs / timed median; bytes from ncu."
    result.add_figure(figures.roofline(points, ceiling), caption=caption)
    absent = _absent(timed_kernels(frame), points["case"])
    if absent:
        result.add(Paragraph(f"Not on the roofline: {absent}.", css="note"))
    return result
