"""End-to-end Flux (rows of kind "e2e"): transformer step latency and its ratio to the fastest dense method of
the run at that resolution (`reports.rows.method_summary`, as the kernel tables), the full image, attention
share, energy, memory, and how many layers had K and V written in the method's own key order.

The output difference against the dense-attention run is a numerical check of the attention swap: with
random transformer weights it says nothing about image quality.
"""

from __future__ import annotations

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import (MISSING, fmt_bytes, fmt_duration, fmt_float, fmt_int, fmt_interval, fmt_ms, fmt_pct,
                                fmt_ratio, fmt_sci)
from reports.rows import method_summary
from reports.run import Run
from reports.tables import Column, build_table, status_class

ID, TITLE = "e2e", "End-to-end Flux"
KEY_ORDER_NOTE = ("K, V in the method's key order: the processor writes them in the order the layer's method asks "
                  "for (HilbertA as FA4 pieces: each shifted layer's keys in tile order) by the ops that write them "
                  "anyway (RoPE's cast, the text-image concatenation, V's projection); its step time includes them.")
DIFF_CAVEAT = ("Output difference vs dense: relative difference of the transformer output against the same "
               "run with dense attention. With random weights this is a numerical check, not image quality.")

COLUMNS = [
    Column("label", "method"), Column("resolution", "resolution"), Column("status", "status"),
    Column("median_ms", "step median ms", fmt_ms, numeric=True),
    Column("ci95", "95 % CI (ms)", numeric=True),
    Column("n_samples", "n", fmt_int, numeric=True),
    Column("vs_dense", "step speedup vs fastest dense [95 % CI]"),
    Column("image_ms", "full image (steps + decode)", fmt_duration, numeric=True),
    Column("attention_share", "attention share", fmt_pct, numeric=True),
    Column("joules_per_image", "J per image", fmt_float, numeric=True),
    Column("peak_memory_bytes", "peak memory", fmt_bytes, numeric=True),
    Column("output_diff_vs_dense", "output difference vs dense", fmt_sci, numeric=True),
    Column("key_order_layers", "layers with K, V in the method's key order", fmt_int, numeric=True),
    Column("reason", "reason"),
]


def section(run: Run) -> Section:
    frame = run.frame
    e2e = frame[frame["kind"] == "e2e"].copy()
    if e2e.empty:
        return Section.empty(ID, TITLE, "No end-to-end Flux rows (kind 'e2e') in this run.")
    e2e["ci95"] = [fmt_interval(lo, hi) for lo, hi in zip(e2e["ci_lo_ms"], e2e["ci_hi_ms"])]
    timed = e2e[(e2e["status"] == "ok") & e2e["median_ms"].notna()]
    e2e["vs_dense"] = _vs_fastest_dense(e2e, timed)
    result = Section(ID, TITLE)
    result.add(build_table(e2e, COLUMNS, caption="One Flux.1-dev transformer step (all 57 attention layers)",
                           row_class=status_class))
    if timed.empty:
        result.add(Paragraph("No end-to-end row finished with a timing: nothing to plot.", css="note"))
    else:
        result.add_figure(figures.e2e_step_bars(timed))
    result.add(Paragraph(DIFF_CAVEAT, css="caveat"))
    result.add(Paragraph(KEY_ORDER_NOTE, css="note"))
    return result


def _vs_fastest_dense(e2e, timed) -> list[str]:
    """Per row: the fastest dense step of its resolution / this step, with the interval from both medians'
    intervals, naming that dense method; MISSING where either is not timed."""
    if timed.empty:
        return [MISSING] * len(e2e)
    summary = method_summary(timed).set_index(["resolution", "method"])
    cells = []
    for key in zip(e2e["resolution"], e2e["method"]):
        row = summary.loc[key] if key in summary.index else None
        if row is None or row["speedup"] != row["speedup"]:  # not timed, or no dense method timed (NaN)
            cells.append(MISSING)
            continue
        interval = fmt_interval(row["speedup_lo"], row["speedup_hi"], fmt_ratio)
        cells.append(f"{fmt_ratio(row['speedup'])} {interval if interval != MISSING else ''} "
                     f"vs {row['fastest_dense_label']}".replace("  ", " "))
    return cells
