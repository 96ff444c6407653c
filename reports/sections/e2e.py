"""End-to-end Flux (rows of kind "e2e"): transformer step latency, attention share, energy, memory.

The output difference against the dense-attention run is a numerical check of the attention swap: with
random transformer weights it says nothing about image quality.
"""

from __future__ import annotations

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_bytes, fmt_float, fmt_int, fmt_interval, fmt_ms, fmt_pct, fmt_sci
from reports.run import Run
from reports.tables import Column, build_table, status_class

ID, TITLE = "e2e", "End-to-end Flux"
DIFF_CAVEAT = ("Output difference vs dense: relative difference of the transformer output against the same "
               "run with dense attention. With random weights this is a numerical check, not image quality.")

COLUMNS = [
    Column("label", "method"), Column("resolution", "resolution"), Column("status", "status"),
    Column("median_ms", "step median ms", fmt_ms, numeric=True),
    Column("ci95", "95 % CI (ms)", numeric=True),
    Column("n_samples", "n", fmt_int, numeric=True),
    Column("attention_share", "attention share", fmt_pct, numeric=True),
    Column("joules_per_image", "J per image", fmt_float, numeric=True),
    Column("peak_memory_bytes", "peak memory", fmt_bytes, numeric=True),
    Column("output_diff_vs_dense", "output difference vs dense", fmt_sci, numeric=True),
    Column("reason", "reason"),
]


def section(run: Run) -> Section:
    frame = run.frame
    e2e = frame[frame["kind"] == "e2e"].copy()
    if e2e.empty:
        return Section.empty(ID, TITLE, "No end-to-end Flux rows (kind 'e2e') in this run.")
    e2e["ci95"] = [fmt_interval(lo, hi) for lo, hi in zip(e2e["ci_lo_ms"], e2e["ci_hi_ms"])]
    result = Section(ID, TITLE)
    result.add(build_table(e2e, COLUMNS, caption="One Flux.1-dev transformer step (all 57 attention layers)",
                           row_class=status_class))
    timed = e2e[(e2e["status"] == "ok") & e2e["median_ms"].notna()]
    if timed.empty:
        result.add(Paragraph("No end-to-end row finished with a timing: nothing to plot.", css="note"))
    else:
        result.add_figure(figures.e2e_step_bars(timed))
    result.add(Paragraph(DIFF_CAVEAT, css="caveat"))
    return result
