"""Latency and throughput of every kernel row: tables per resolution and the charts built on them.

Speedups are over the fastest dense reference at the same resolution; rows that failed correctness or
have no timing are listed with their status but never ranked. Charts use `reports.rows.PHASE_BASIS`; the
per-layer table and the per-phase chart show each phase.
"""

from __future__ import annotations

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_int, fmt_interval, fmt_ms, fmt_pct, fmt_ratio, fmt_tflops
from reports.rows import PHASE_BASIS, method_summary, resolution_order, timed_kernels
from reports.run import Run
from reports.sections.common import CASE_COLUMNS
from reports.tables import Column, build_table, status_class

ID, TITLE = "latency", "Latency and throughput"

LATENCY_COLUMNS = [
    Column("label", "method"), Column("layer", "layer", fmt_int, numeric=True), Column("backend", "backend"),
    Column("status", "status"), Column("reason", "reason"), Column("median_ms", "median ms", fmt_ms, numeric=True),
    Column("ci95", "95 % CI (ms)", tip="as the harness recorded it (see the footer for the method)"),
    Column("iqr_ms", "IQR ms", fmt_ms, numeric=True, tip="interquartile range of the samples"),
    Column("n_samples", "samples", fmt_int, numeric=True),
    Column("speedup", "speedup vs fastest dense", fmt_ratio, numeric=True,
           tip="fastest dense kernel's ms (its own basis) / this row's median"),
]
THROUGHPUT_COLUMNS = [
    *CASE_COLUMNS,
    Column("token_density", "token density", fmt_pct, numeric=True, tip="allowed (query, key) pairs / L²"),
    Column("block_density", "computed-block density", fmt_pct, numeric=True,
           tip="share of (query block, key block) tiles the kernel computes"),
    Column("tflops_effective", "effective TFLOP/s", fmt_tflops, numeric=True,
           tip="FLOPs of the allowed pairs only / median time: comparable with the card's peak"),
    Column("tflops_dense_equivalent", "dense-equivalent TFLOP/s", fmt_tflops, numeric=True,
           tip="dense attention's FLOPs / median time: a speed figure, not hardware throughput (can exceed peak)"),
    Column("wasted", "computed / effective FLOPs", fmt_ratio, numeric=True,
           tip="FLOPs computed (whole blocks) / FLOPs of allowed pairs: the cost of block granularity"),
    Column("setup_layout_ms", "layout ms", fmt_ms, numeric=True, tip="one-off: building the token order/mask"),
    Column("setup_permute_ms", "permute ms", fmt_ms, numeric=True, tip="reordering Q, K, V into the curve order"),
    Column("setup_first_call_ms", "first call ms", fmt_ms, numeric=True, tip="one-off: includes compilation"),
]


def section(run: Run) -> Section:
    frame = run.frame
    kernels = frame[frame["kind"] == "kernel"].copy()
    if kernels.empty:
        return Section.empty(ID, TITLE, "No kernel rows in this run.")
    resolutions = resolution_order(kernels)
    summary = method_summary(timed_kernels(kernels))
    fastest = summary.drop_duplicates("resolution").set_index("resolution")["fastest_dense_ms"]
    kernels["speedup"] = kernels["resolution"].map(fastest).astype(float) / kernels["median_ms"]
    kernels.loc[kernels["status"] != "ok", "speedup"] = float("nan")
    kernels["ci95"] = [fmt_interval(lo, hi) for lo, hi in zip(kernels["ci_lo_ms"], kernels["ci_hi_ms"])]
    kernels["wasted"] = kernels["computed_flops"] / kernels["effective_flops"]

    result = Section(ID, TITLE)
    for resolution in [*resolutions, None]:
        rows = kernels[kernels["resolution"] == resolution] if resolution else kernels[kernels["resolution"].isna()]
        if not rows.empty:
            caption = f"Kernel latency per layer at {resolution}" if resolution else "Kernel rows without a problem size"
            result.add(build_table(rows, LATENCY_COLUMNS, caption=caption, row_class=status_class))
    result.add(build_table(kernels, THROUGHPUT_COLUMNS, caption="Throughput, density and one-off costs",
                           row_class=status_class))
    _add_figures(result, kernels, summary, resolutions)
    return result


def _add_figures(result: Section, kernels, summary, resolutions) -> None:
    if summary.empty:
        result.add(Paragraph("No kernel passed correctness with a timing, so there is nothing to plot.", css="note"))
        return
    colours = figures.method_colours(summary)
    if len(resolutions) > 1:
        result.add_figure(figures.latency_vs_resolution(summary, resolutions, colours))
    ranked = summary.dropna(subset=["speedup"])
    ranked = ranked[~(ranked["dense_reference"] & (ranked["label"] == ranked["fastest_dense_label"]))]  # 1x
    if ranked.empty:
        result.add(Paragraph("No dense reference was timed next to another method: no speedup chart.", css="note"))
    else:
        result.add_figure(figures.speedup_bars(ranked, colours), caption=f"Basis: {PHASE_BASIS}.")
    sparse = summary[~summary["dense_reference"]].dropna(subset=["token_density", "speedup"])
    if sparse.empty:
        result.add(Paragraph("No sparse method with a known density and a speedup: no speed-vs-density chart.",
                             css="note"))
    else:
        result.add_figure(figures.speed_vs_density(summary.dropna(subset=["token_density", "speedup"])))
    phases = timed_kernels(kernels)
    layers = phases.groupby(["resolution", "method"])["layer"].transform("nunique")
    phases = phases[layers > 1]
    if not phases.empty:
        result.add_figure(figures.phase_latency(phases, resolutions, colours))
    else:
        result.add(Paragraph("No method was timed at more than one layer (sliding phase): no per-phase chart.",
                             css="note"))
