"""Latency and throughput of every kernel row: tables per resolution and the charts built on them.

Speedups are over the fastest dense reference at the same resolution; rows that failed correctness or
have no timing are listed with their status but never ranked.
"""

from __future__ import annotations

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_float, fmt_int, fmt_interval, fmt_ms, fmt_pct, fmt_ratio
from reports.rows import method_summary, resolution_order, timed_kernels
from reports.run import Run
from reports.sections.common import CASE_COLUMNS
from reports.sections.headline import HILBERTA_FAMILY, PAPER_CLAIMS
from reports.tables import Column, build_table, status_class

ID, TITLE = "latency", "Latency and throughput"

LATENCY_COLUMNS = [
    Column("label", "method"), Column("layer", "layer", fmt_int, numeric=True), Column("backend", "backend"),
    Column("status", "status"), Column("median_ms", "median ms", fmt_ms, numeric=True),
    Column("ci95", "95 % CI (ms)", numeric=True), Column("iqr_ms", "IQR ms", fmt_ms, numeric=True),
    Column("n_samples", "n", fmt_int, numeric=True),
    Column("speedup", "speedup vs fastest dense", fmt_ratio, numeric=True),
]
THROUGHPUT_COLUMNS = [
    *CASE_COLUMNS,
    Column("token_density", "token density", fmt_pct, numeric=True),
    Column("block_density", "computed-block density", fmt_pct, numeric=True),
    Column("tflops_dense_equivalent", "dense-equivalent TFLOP/s", fmt_float, numeric=True),
    Column("tflops_effective", "effective TFLOP/s", fmt_float, numeric=True),
    Column("wasted", "computed / effective FLOPs", fmt_ratio, numeric=True),
    Column("setup_layout_ms", "layout ms", fmt_ms, numeric=True),
    Column("setup_permute_ms", "permute ms", fmt_ms, numeric=True),
    Column("setup_first_call_ms", "first call ms", fmt_ms, numeric=True),
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
            caption = f"Kernel latency at {resolution}" if resolution else "Kernel rows without a problem size"
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
    result.add_figure(figures.latency_vs_resolution(summary, resolutions, colours))
    ranked = summary.dropna(subset=["speedup"])
    is_fastest_dense = ranked["dense_reference"] & (ranked["label"] == ranked["fastest_dense_label"])
    ranked = ranked[~is_fastest_dense]  # 1x by definition
    if ranked.empty:
        result.add(Paragraph("No dense reference was timed next to another method: no speedup chart.", css="note"))
    else:
        # the paper's claims are HilbertA's: mark them only where a HilbertA method is on the chart
        with_hilberta = set(ranked.loc[ranked["family"] == HILBERTA_FAMILY, "resolution"])
        claims = {res: claim for res, claim in PAPER_CLAIMS.items() if res in with_hilberta}
        result.add_figure(figures.speedup_bars(ranked, claims, colours))
    if summary[["tflops_dense_equivalent", "tflops_effective"]].notna().any().any():
        result.add_figure(figures.throughput_bars(summary))
    else:
        result.add(Paragraph("No row carries TFLOP/s figures.", css="note"))
    sparse = summary[~summary["dense_reference"]].dropna(subset=["token_density", "speedup"])
    if sparse.empty:
        result.add(Paragraph("No sparse method with a known density and a speedup: no speed-vs-density chart.",
                             css="note"))
    else:
        result.add_figure(figures.speed_vs_density(summary.dropna(subset=["token_density", "speedup"])))
    phases = timed_kernels(kernels)
    phases = phases[phases["family"] == HILBERTA_FAMILY]
    layers = phases.groupby(["resolution", "method"])["layer"].transform("nunique")
    phases = phases[layers > 1]
    if not phases.empty:
        result.add_figure(figures.phase_latency(phases, resolutions, colours))
    else:
        result.add(Paragraph("No HilbertA method was timed at more than one layer (sliding phase): no "
                             "per-phase chart.", css="note"))
