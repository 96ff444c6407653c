"""Memory traffic: DRAM bytes per call against the compulsory bytes, and a roofline with the run's ceilings.

Ceilings come from `reports.ceilings` (measured in the run, else the datasheet scaled by the SM clock under
load; the caption says which). Arithmetic intensity = effective (unmasked) FLOPs / DRAM bytes read and
written (filled points) and / L2 bytes (open points). Timed methods missing from the roofline are listed
with the reason.

The same ncu pass reads SM counters (`harness.measure.ncu_counters`): tensor-pipe utilisation, achieved
occupancy, SM throughput and the top warp stall reasons in cycles per issued instruction, each a mean over
the call's kernels weighted by their duration. They sit in a second table, the why next to the how fast
(a kernel short of the tensor peak: pipe idle, few warps, or warps waiting on what).
"""

from __future__ import annotations

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.ceilings import ceilings
from reports.formatting import (
    MISSING,
    fmt_bytes,
    fmt_gbps,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    fmt_text,
    number_or_none,
    significant,
)
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


STALLS_TIP = ("the three largest warp stall reasons (ncu smsp__average_warps_issue_stalled_<reason>_per_issue_active), "
              "in warp cycles per issued instruction; 'of' is the total cycles between two issued instructions "
              "of a warp, the issue cycle included")

COUNTER_COLUMNS = [
    *CASE_COLUMNS,
    Column("tensor_pipe", "tensor pipe", fmt_pct, numeric=True,
           tip="tensor pipe cycles active, % of peak over active SM cycles (ncu sm__pipe_tensor_cycles_active; "
               "else the busier of its hmma/gmma sub-pipes)"),
    Column("achieved_occupancy", "achieved occupancy", fmt_pct, numeric=True,
           tip="active warps / warp slots over active cycles (ncu sm__warps_active)"),
    Column("sm_throughput", "SM throughput", fmt_pct, numeric=True,
           tip="busiest SM unit, % of its peak over elapsed time (ncu sm__throughput)"),
    Column("top_stalls_text", "top 3 stall reasons (cycles per issued instruction)", fmt_text, tip=STALLS_TIP),
]


def stalls_text(top: object, total: object) -> str | None:
    """``[{"reason", "cycles_per_issue"}, ...]`` as "long scoreboard 3.12, barrier 1.20 (of 8.04)"; None if empty."""
    if not isinstance(top, list):
        return None
    parts = []
    for stall in top:
        value = number_or_none(stall.get("cycles_per_issue")) if isinstance(stall, dict) else None
        if value is not None:
            parts.append(f"{str(stall.get('reason', '?')).replace('_', ' ')} {significant(value)}")
    if not parts:
        return None
    total = number_or_none(total)
    return ", ".join(parts) + (f" (of {significant(total)})" if total is not None else "")


def with_counters(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the SM counter columns the tables show: fractions for the percentages (fmt_pct's
    scale) and the stall text."""
    frame = frame.copy()
    for name in ("tensor_pipe", "achieved_occupancy", "sm_throughput"):
        frame[name] = frame[f"{name}_pct"] / 100
    frame["top_stalls_text"] = [stalls_text(top, total)
                                for top, total in zip(frame["top_stalls"], frame["warp_cycles_per_issue"])]
    return frame


def _counters_table(result: Section, measured: pd.DataFrame) -> None:
    """The SM counters table, or a note when no traffic row carries them; rows that lack them say why."""
    counted = measured[["tensor_pipe", "achieved_occupancy", "sm_throughput", "top_stalls_text"]].notna().any(axis=1)
    if not counted.any():
        result.add(Paragraph("No SM counters (tensor pipe, occupancy, stalls) in this run's ncu rows: recorded "
                             "before they were collected, or ncu refused them.", css="note"))
        return
    result.add(build_table(measured, COUNTER_COLUMNS, caption=(
        "Why a kernel is as fast as it is, from the same ncu pass: each value a mean over the call's kernels "
        f"weighted by kernel duration under ncu; {MISSING} where ncu did not report it")))
    missing = measured[~counted & measured["counters_reason"].notna()]
    if not missing.empty:
        why = "; ".join(f"{record['label']} at {record['resolution']}: {fmt_text(record['counters_reason'])}"
                        for record in missing.drop_duplicates(["resolution", "method"]).to_dict("records"))
        result.add(Paragraph(f"No SM counters for {why}.", css="note"))


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
    frame = with_counters(run.frame)
    measured = frame[frame["dram_bytes"].notna()].copy()
    if measured.empty:
        return Section.empty(ID, TITLE, missing_measurement_note(
            frame, "DRAM traffic (ncu)", "traffic_status", "traffic_reason"))
    measured["excess"] = measured["dram_bytes"] / measured["compulsory_bytes"]
    result = Section(ID, TITLE)
    result.add(build_table(measured, COLUMNS, caption="DRAM and L2 bytes of one call, from ncu"))
    _counters_table(result, measured)
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
