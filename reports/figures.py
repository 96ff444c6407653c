"""Plotly figures of the report, one builder per chart, and the block that embeds one in the page.

Builders take tidy pandas frames (see `reports.rows`) and return ``go.Figure``. Every string that comes
from results goes through `plot_text` first: plotly.js reads a small HTML subset in labels, and a method
called ``<b>x</b>`` must show as typed. Figures are embedded with ``include_plotlyjs=False``; the page
inlines plotly.js once in its head (see `reports.build`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.subplots import make_subplots

FAMILY_COLOURS = {
    "dense": "#4c78a8",
    "hilberta": "#e45756",
    "sliding_tile": "#54a24b",
    "neighborhood": "#b279a2",
    "control": "#9d755d",
}
OTHER_COLOUR = "#79706e"
# Per-method colours where methods sit side by side: dense kernels in blues and greys, the rest vivid.
DENSE_SHADES = ("#1f4e79", "#4c78a8", "#7fa7d0", "#6b6ecf", "#9e9e9e", "#3b3b3b")
SPARSE_SHADES = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                 "#f4a582", "#66c2a5", "#a6761d", "#e7298a")
# Gate outcomes (harness.apps.gate.compare.OUTCOMES) and the report's own "not judged"; failing ones are warm colours.
OUTCOME_COLOURS = {
    "incorrect": "#6a1b9a",
    "failed": "#8e0000",
    "missing": "#ef8f00",
    "regression": "#c62828",
    "inconclusive": "#b0a060",
    "missing-allowed": "#a0a0a0",
    "unchanged": "#8a8a8a",
    "improvement": "#2e7d32",
    "new": "#1565c0",
    "not-compared": "#a0a0a0",
    "not judged": "#79706e",
}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
HEIGHT = 420


def plot_text(value: object) -> str:
    """A results string made literal for plotly.js (which would otherwise render <b>, <a>, <br> tags)."""
    return html.escape(str(value), quote=False)


def family_colour(family: object) -> str:
    return FAMILY_COLOURS.get(family, OTHER_COLOUR)


def method_colours(summary: pd.DataFrame) -> dict[str, str]:
    """A distinct colour per method of ``summary`` (columns method, family, dense_reference), the same in
    every chart that gets the mapping."""
    methods = summary.drop_duplicates("method")
    dense = methods["dense_reference"] | (methods["family"] == "dense")
    colours = {}
    for is_dense, shades in ((True, DENSE_SHADES), (False, SPARSE_SHADES)):
        chosen = methods.loc[dense == is_dense, "method"]
        colours.update({method: shades[i % len(shades)] for i, method in enumerate(chosen)})
    return colours


@dataclass(frozen=True)
class FigureBlock:
    """A figure placed in a section; ``html`` is the trusted plotly div (data inside is JSON-escaped)."""

    figure: go.Figure
    div_id: str
    caption: str = ""
    kind: str = "figure"

    @property
    def html(self) -> Markup:
        return Markup(self.figure.to_html(full_html=False, include_plotlyjs=False, div_id=self.div_id,
                                          config=PLOT_CONFIG))


def _styled(fig: go.Figure, title: str, height: int = HEIGHT, **layout) -> go.Figure:
    settings = dict(title=title, template="plotly_white", height=height, font_family=FONT,
                    margin=dict(l=60, r=20, t=60, b=60), legend_title_text="")
    fig.update_layout(**{**settings, **layout})
    return fig


def _category_pairs(frame: pd.DataFrame, outer: str, inner: str) -> list[list[str]]:
    """x values for a two-level category axis (e.g. resolution, then method label); where one label has
    several rows under one outer value (sliding phases), the layer is added so bars do not pile up."""
    repeated = frame.duplicated([outer, inner], keep=False)
    inner_text = [f"{label} · layer {layer:.0f}" if again and not pd.isna(layer) else str(label)
                  for label, layer, again in zip(frame[inner], frame.get("layer", repeated * math.nan), repeated)]
    return [[plot_text(v) for v in frame[outer]], [plot_text(v) for v in inner_text]]


def latency_vs_resolution(summary: pd.DataFrame, resolutions: Sequence[str], colours: Mapping[str, str]) -> go.Figure:
    """Median latency per method across resolutions, log y; dense references dashed."""
    fig = go.Figure()
    for method, rows in summary.groupby("method", sort=False):
        rows = rows.set_index("resolution").reindex([r for r in resolutions if r in set(rows["resolution"])])
        first = rows.iloc[0]
        errors = dict(type="data", symmetric=False, array=rows["ci_hi_ms"] - rows["median_ms"],
                      arrayminus=rows["median_ms"] - rows["ci_lo_ms"])
        fig.add_trace(go.Scatter(
            x=[plot_text(r) for r in rows.index], y=rows["median_ms"], name=plot_text(first["label"]),
            mode="lines+markers", error_y=errors,
            line=dict(color=colours.get(method, OTHER_COLOUR), dash="dash" if first["dense_reference"] else "solid"),
            customdata=rows["phases"], hovertemplate="%{x}: %{y:.4g} ms (mean of %{customdata} phase(s))",
        ))
    present = set(summary["resolution"])
    fig.update_xaxes(type="category", categoryorder="array", title="resolution",
                     categoryarray=[plot_text(r) for r in resolutions if r in present])
    fig.update_yaxes(type="log", title="median latency per call (ms)")
    return _styled(fig, "Latency vs resolution (95 % CI where one phase was timed)")


def speedup_bars(summary: pd.DataFrame, paper_claims: Mapping[str, float], colours: Mapping[str, str]) -> go.Figure:
    """Speedup of each method over the fastest dense kernel at its resolution, with the paper's claims."""
    fig = go.Figure()
    for method, rows in summary.groupby("method", sort=False):
        first = rows.iloc[0]
        fig.add_trace(go.Bar(
            x=[plot_text(r) for r in rows["resolution"]], y=rows["speedup"], name=plot_text(first["label"]),
            marker_color=colours.get(method, OTHER_COLOUR), text=[f"{s:.2f}×" for s in rows["speedup"]],
            textposition="outside",
        ))
    claimed = [r for r in summary["resolution"].unique() if r in paper_claims]
    if claimed:
        fig.add_trace(go.Scatter(
            x=[plot_text(r) for r in claimed], y=[paper_claims[r] for r in claimed], mode="markers",
            name="paper claim (HilbertA vs an unnamed dense baseline)",
            marker=dict(symbol="diamond", size=14, color="black"),
        ))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555")
    fig.update_xaxes(type="category", title="resolution")
    fig.update_yaxes(title="speedup over the fastest dense kernel (×)")
    return _styled(fig, "Speedup over the fastest dense kernel on this card", barmode="group")


def throughput_bars(summary: pd.DataFrame) -> go.Figure:
    """Dense-equivalent and effective TFLOP/s per method and resolution."""
    rows = summary.dropna(subset=["tflops_dense_equivalent", "tflops_effective"], how="all")
    fig = go.Figure()
    for column, name, colour in (("tflops_dense_equivalent", "dense-equivalent (dense FLOPs / time)", "#4c78a8"),
                                 ("tflops_effective", "effective (unmasked FLOPs / time)", "#f58518")):
        fig.add_trace(go.Bar(x=_category_pairs(rows, "resolution", "label"), y=rows[column], name=name,
                             marker_color=colour))
    fig.update_yaxes(title="TFLOP/s")
    return _styled(fig, "Throughput: dense-equivalent and effective TFLOP/s", barmode="group")


def _scatter_by_family(fig: go.Figure, frame: pd.DataFrame, x: str, y: str, hover: str) -> None:
    """One marker trace per method family, each point labelled with its method and resolution."""
    for family, group in frame.groupby("family", sort=False, dropna=False):
        fig.add_trace(go.Scatter(
            x=group[x], y=group[y], mode="markers", name=plot_text(family),
            marker=dict(size=11, color=family_colour(family)),
            text=[f"{plot_text(label)} @ {plot_text(res)}" for label, res in zip(group["label"], group["resolution"])],
            hovertemplate=f"%{{text}}<br>{hover}<extra></extra>",
        ))


def speed_vs_density(summary: pd.DataFrame) -> go.Figure:
    """Speedup over the fastest dense kernel against token density; the ideal is 1 / density."""
    rows = summary.dropna(subset=["token_density", "speedup"])
    fig = go.Figure()
    _scatter_by_family(fig, rows, "token_density", "speedup", "density %{x:.1%}, speedup %{y:.2f}×")
    low = max(min(rows["token_density"].min(), 1.0), 0.02)
    ideal_x = np.linspace(low, 1.0, 60)
    fig.add_trace(go.Scatter(x=ideal_x, y=1.0 / ideal_x, mode="lines", name="ideal: 1 / density",
                             line=dict(color="#555", dash="dot")))
    fig.update_xaxes(title="token density (allowed pairs / L²)", tickformat=".0%")
    fig.update_yaxes(title="speedup over the fastest dense kernel (×)")
    return _styled(fig, "Speed vs density (all timed methods)")


def phase_latency(phases: pd.DataFrame, resolutions: Sequence[str], colours: Mapping[str, str]) -> go.Figure:
    """HilbertA latency per transformer layer (sliding phase), one panel per resolution."""
    present = [r for r in resolutions if r in set(phases["resolution"])]
    fig = make_subplots(rows=1, cols=len(present), subplot_titles=[plot_text(r) for r in present])
    in_legend: set[str] = set()
    for col, resolution in enumerate(present, start=1):
        for method, rows in phases[phases["resolution"] == resolution].groupby("method", sort=False):
            rows = rows.sort_values("layer")
            fig.add_trace(go.Scatter(
                x=rows["layer"], y=rows["median_ms"], mode="lines+markers", name=plot_text(rows["label"].iloc[0]),
                legendgroup=plot_text(method), showlegend=method not in in_legend,
                line=dict(color=colours.get(method, OTHER_COLOUR)),
                error_y=dict(type="data", symmetric=False, array=rows["ci_hi_ms"] - rows["median_ms"],
                             arrayminus=rows["median_ms"] - rows["ci_lo_ms"]),
            ), row=1, col=col)
            in_legend.add(method)
        fig.update_xaxes(title_text="layer (sliding offset = layer mod cycle)", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="median ms" if col == 1 else None, rangemode="tozero", row=1, col=col)
    return _styled(fig, "HilbertA latency per sliding phase (95 % CI)")


def traffic_bars(traffic: pd.DataFrame) -> go.Figure:
    """DRAM bytes read and written per call (stacked) against the compulsory Q+K+V+O bytes."""
    x = _category_pairs(traffic, "resolution", "label")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=traffic["dram_read_bytes"], name="DRAM read", marker_color="#4c78a8"))
    fig.add_trace(go.Bar(x=x, y=traffic["dram_write_bytes"], name="DRAM written", marker_color="#72b7b2"))
    fig.add_trace(go.Scatter(x=x, y=traffic["compulsory_bytes"], mode="markers",
                             name="compulsory (Q, K, V read + O written once)",
                             marker=dict(symbol="line-ew-open", size=36, color="black", line=dict(width=3))))
    fig.update_yaxes(title="bytes per call")
    return _styled(fig, "DRAM traffic per call vs compulsory bytes", barmode="stack")


def roofline(points: pd.DataFrame, ceilings: Mapping | None) -> go.Figure:
    """Achieved effective TFLOP/s against arithmetic intensity (effective FLOPs / DRAM bytes), log-log."""
    fig = go.Figure()
    _scatter_by_family(fig, points, "intensity", "tflops_effective", "%{x:.3g} FLOP/B, %{y:.4g} TFLOP/s")
    if ceilings:
        ridge = ceilings["tflops"] * 1e3 / ceilings["gbps"]  # FLOP/byte where the two ceilings meet
        low = min(points["intensity"].min(), ridge) / 4
        high = max(points["intensity"].max(), ridge) * 4
        xs = [low, ridge, high]
        fig.add_trace(go.Scatter(
            x=xs, y=[min(ceilings["tflops"], x * ceilings["gbps"] / 1e3) for x in xs], mode="lines",
            name=plot_text(f"ceiling: {ceilings['source']}"), line=dict(color="black", dash="dash"),
        ))
    fig.update_xaxes(type="log", title="arithmetic intensity (effective FLOPs / DRAM byte)")
    fig.update_yaxes(type="log", title="achieved effective TFLOP/s")
    return _styled(fig, "Roofline")


def energy_bars(power: pd.DataFrame) -> go.Figure:
    """Joules per call per method and resolution (mean watts in the hover)."""
    fig = go.Figure(go.Bar(
        x=_category_pairs(power, "resolution", "label"), y=power["joules_per_call"],
        marker_color=[family_colour(f) for f in power["family"]], customdata=power["mean_watts"],
        hovertemplate="%{y:.4g} J/call at %{customdata:.0f} W<extra></extra>",
    ))
    fig.update_yaxes(title="joules per call")
    return _styled(fig, "Energy per attention call", showlegend=False)


def e2e_step_bars(e2e: pd.DataFrame) -> go.Figure:
    """Transformer step latency per method, split into attention and everything else where known."""
    x = _category_pairs(e2e, "resolution", "label")
    share = e2e["attention_share"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=e2e["median_ms"] * share, name="attention", marker_color="#e45756"))
    fig.add_trace(go.Bar(x=x, y=e2e["median_ms"] * (1 - share), name="rest of the step", marker_color="#bab0ac"))
    unsplit = share.isna() & e2e["median_ms"].notna()
    if unsplit.any():
        fig.add_trace(go.Bar(x=_category_pairs(e2e[unsplit], "resolution", "label"), y=e2e.loc[unsplit, "median_ms"],
                             name="step (attention share unknown)", marker_color="#79706e"))
    fig.update_yaxes(title="median ms per transformer step")
    return _styled(fig, "End-to-end Flux step latency", barmode="stack")


TUNE_FLAGS = ("flat_loop", "tma", "head_major")  # boolean knobs of a tuned kernel, shown when on


def tuning_heatmap(tune: pd.DataFrame, title: str) -> go.Figure:
    """Median ms per launch configuration: rows block_m x block_n, columns num_warps x num_stages and the
    kernel's on/off knobs (flat loop, TMA, head-major order) that were on."""
    tune = tune.sort_values(["block_m", "block_n", "num_warps", "num_stages"])
    blocks = tune.apply(lambda r: f"m{r.block_m:.0f} n{r.block_n:.0f}", axis=1)
    launch = tune.apply(lambda r: " ".join([f"w{r.num_warps:.0f} s{r.num_stages:.0f}"]
                                           + [flag for flag in TUNE_FLAGS if r.get(flag) in (True,)]), axis=1)
    grid = pd.DataFrame({"blocks": blocks, "launch": launch, "ms": tune["median_ms"]}).pivot_table(
        index="blocks", columns="launch", values="ms", aggfunc="min", sort=False, dropna=False)
    text = [[("" if math.isnan(v) else f"{v:.4g}") for v in row] for row in grid.to_numpy()]
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), text=text, texttemplate="%{text}",
        colorscale="Viridis_r", colorbar=dict(title="ms"), hoverongaps=False,
        hovertemplate="%{y} %{x}: %{z:.4g} ms<extra></extra>",
    ))
    fig.update_xaxes(title="num_warps, num_stages", type="category")
    fig.update_yaxes(title="block_m, block_n", type="category", autorange="reversed")
    return _styled(fig, plot_text(title), height=max(300, 60 * len(grid.index) + 140))


def compare_deltas(deltas: pd.DataFrame) -> go.Figure:
    """Relative change of each case's median (candidate / reference - 1), coloured by the gate's outcome."""
    colours = [OUTCOME_COLOURS.get(v, OTHER_COLOUR) for v in deltas["outcome"]]
    fig = go.Figure(go.Bar(
        y=[plot_text(c) for c in deltas["case"]], x=deltas["delta"], orientation="h", marker_color=colours,
        text=[plot_text(v) for v in deltas["outcome"]], textposition="auto",
        hovertemplate="%{y}: %{x:+.1%}<extra></extra>",
    ))
    fig.add_vline(x=0.0, line_color="#555")
    fig.update_xaxes(title="candidate median / reference median − 1 (positive = slower)", tickformat="+.0%")
    fig.update_yaxes(autorange="reversed", type="category")
    return _styled(fig, "Change per case", height=max(300, 26 * len(deltas) + 140), showlegend=False,
                   margin=dict(l=280, r=20, t=60, b=60))
