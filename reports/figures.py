"""Plotly figures of the report, one builder per chart, and the block that embeds one in the page.

Builders take tidy pandas frames (see `reports.rows`) and return ``go.Figure``. Every string that comes
from results goes through `plot_text` first: plotly.js reads a small HTML subset in labels, and a method
called ``<b>x</b>`` must show as typed. Figures are embedded with ``include_plotlyjs=False``; the page
inlines plotly.js once in its head, packed (see `reports.build`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.subplots import make_subplots
from plotly.utils import PlotlyJSONEncoder

from reports.formatting import fmt_bytes

CATEGORY_COLOURS = {
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
# A small white template: plotly's "plotly_white" would embed ~8 kB of trace defaults in every figure.
_GRID = dict(gridcolor="#ebf0f8", linecolor="#ebf0f8", zerolinecolor="#ebf0f8", automargin=True)
TEMPLATE = go.layout.Template(layout=dict(paper_bgcolor="white", plot_bgcolor="white", font_color="#2a3f5f",
                                          xaxis=_GRID, yaxis=_GRID, hoverlabel_align="left"))
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
HEIGHT = 420


def plot_text(value: object) -> str:
    """A results string made literal for plotly.js (which would otherwise render <b>, <a>, <br> tags)."""
    return html.escape(str(value), quote=False)


def category_colour(category: object) -> str:
    return CATEGORY_COLOURS.get(category, OTHER_COLOUR)


def method_colours(summary: pd.DataFrame) -> dict[str, str]:
    """A distinct colour per method of ``summary`` (columns method, category, dense_reference), the same in
    every chart that gets the mapping."""
    methods = summary.drop_duplicates("method")
    dense = methods["dense_reference"] | (methods["category"] == "dense")
    colours = {}
    for is_dense, shades in ((True, DENSE_SHADES), (False, SPARSE_SHADES)):
        chosen = methods.loc[dense == is_dense, "method"]
        colours.update({method: shades[i % len(shades)] for i, method in enumerate(chosen)})
    return colours


@dataclass(frozen=True)
class FigureBlock:
    """A figure placed in a section. ``html`` is trusted markup: an empty div sized like the figure and its
    spec as inert JSON (``<script type="application/json" class="figure-data">``, with <, > and & escaped,
    so no string from results can close the tag). The page draws the figures after its load event, one by
    one (see templates/report.html): the first screen, which is text, does not wait for the charts."""

    figure: go.Figure
    div_id: str
    caption: str = ""
    kind: str = "figure"

    @property
    def html(self) -> Markup:
        spec = {**self.figure.to_plotly_json(), "config": PLOT_CONFIG}
        text = json.dumps(spec, cls=PlotlyJSONEncoder, separators=(",", ":"))
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        height = self.figure.layout.height or HEIGHT
        return Markup(f'<div id="{self.div_id}" class="plotly-graph-div" style="height:{height}px;width:100%"></div>'
                      f'<script type="application/json" class="figure-data" data-div="{self.div_id}">{text}</script>')


def _styled(fig: go.Figure, title: str, height: int = HEIGHT, **layout) -> go.Figure:
    settings = dict(title=title, template=TEMPLATE, height=height, font_family=FONT,
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


def _row_names(frame: pd.DataFrame) -> list[str]:
    """One bar label per row: the method, with its resolution when the frame holds several, and its layer
    when one method appears at several layers."""
    several_res = frame["resolution"].nunique() > 1
    repeated = frame.duplicated(["resolution", "label"], keep=False)
    names = []
    layers = frame["layer"] if "layer" in frame else pd.Series(math.nan, index=frame.index)
    for label, res, layer, again in zip(frame["label"], frame["resolution"], layers, repeated):
        name = f"{label} · {res}" if several_res else str(label)
        names.append(plot_text(f"{name} · layer {layer:.0f}" if again and not pd.isna(layer) else name))
    return names


def log_ticks(low: float, high: float, render) -> dict:
    """tickvals/ticktext for a log axis from ``low`` to ``high``: 1-2-5 steps per decade (only the decades
    when the range spans more than two), each labelled with ``render`` (so bytes read "2.00 GB", not "2B")."""
    if not (low > 0 and high > 0):
        return {}
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1,) if last - first > 3 else (1, 2, 5)
    values = [m * 10.0 ** e for e in range(first, last + 1) for m in steps if low / 1.5 <= m * 10.0 ** e <= high * 1.5]
    return dict(tickmode="array", tickvals=values, ticktext=[render(v) for v in values])


def _log_axis(values: pd.Series, render, title: str) -> dict:
    values = values[values > 0].dropna()
    return dict(type="log", title=title, **log_ticks(values.min(), values.max(), render)) if not values.empty \
        else dict(title=title)


def latency_vs_resolution(summary: pd.DataFrame, resolutions: Sequence[str], colours: Mapping[str, str]) -> go.Figure:
    """Latency per method across resolutions (drawn only for two or more), log y; dense references dashed."""
    fig = go.Figure()
    for method, rows in summary.groupby("method", sort=False):
        rows = rows.set_index("resolution").reindex([r for r in resolutions if r in set(rows["resolution"])])
        first = rows.iloc[0]
        fig.add_trace(go.Scatter(
            x=[plot_text(r) for r in rows.index], y=rows["median_ms"], name=plot_text(first["label"]),
            mode="lines+markers", error_y=_errors(rows["median_ms"], rows["ci_lo_ms"], rows["ci_hi_ms"]),
            line=dict(color=colours.get(method, OTHER_COLOUR), dash="dash" if first["dense_reference"] else "solid"),
            hovertemplate="%{x}: %{y:.4g} ms<extra>" + plot_text(first["label"]) + "</extra>",
        ))
    fig.update_xaxes(type="category", title="resolution")
    fig.update_yaxes(**_log_axis(summary["median_ms"], lambda v: f"{v:g} ms", "ms per call"))
    return _styled(fig, "Latency vs resolution (mean over phases, 95 % interval)")


def _errors(centre: pd.Series, low: pd.Series, high: pd.Series) -> dict:
    return dict(type="data", symmetric=False, array=(high - centre).clip(lower=0),
                arrayminus=(centre - low).clip(lower=0), color="#333", thickness=1.2)


def speedup_bars(summary: pd.DataFrame, colours: Mapping[str, str]) -> go.Figure:
    """Speedup of each method over the fastest dense kernel at its size, sorted, with 95 % intervals."""
    rows = summary.sort_values("speedup")
    names = _row_names(rows)
    fig = go.Figure(go.Bar(
        y=names, x=rows["speedup"], orientation="h", marker_color=[colours.get(m, OTHER_COLOUR) for m in rows["method"]],
        error_x=_errors(rows["speedup"], rows["speedup_lo"], rows["speedup_hi"]),
        text=[f"{s:.2f}×" for s in rows["speedup"]], textposition="inside", insidetextanchor="start",
        textfont=dict(color="white"),
        customdata=list(zip(rows["fastest_dense_label"].map(plot_text), rows["median_ms"])),
        hovertemplate="%{y}: %{x:.2f}× the fastest dense (%{customdata[0]}); %{customdata[1]:.4g} ms<extra></extra>",
    ))
    fig.add_vline(x=1.0, line_dash="dot", line_color="#555")
    fig.update_xaxes(title="speedup over the fastest dense kernel (×), 95 % interval", rangemode="tozero")
    fig.update_yaxes(type="category", automargin=True)
    return _styled(fig, "Speedup over the fastest dense kernel, sorted", height=max(300, 28 * len(rows) + 120),
                   showlegend=False, margin=dict(l=20, r=60, t=60, b=60))


LABEL_SIDES = ("middle right", "top center", "middle left", "bottom center")


def speed_vs_density(summary: pd.DataFrame) -> go.Figure:
    """Speedup over the fastest dense kernel against token density, every point labelled; ideal = 1 / density."""
    fig = go.Figure()
    # neighbours in density get their labels on alternating sides, so a cluster stays readable
    summary = summary.sort_values(["token_density", "speedup"])
    summary = summary.assign(_at=[LABEL_SIDES[i % len(LABEL_SIDES)] for i in range(len(summary))])
    for family, group in summary.groupby("category", sort=False, dropna=False):
        fig.add_trace(go.Scatter(
            x=group["token_density"], y=group["speedup"], mode="markers+text", name=plot_text(family),
            marker=dict(size=10, color=category_colour(family)), text=[plot_text(v) for v in group["label"]],
            textposition=list(group["_at"]), textfont=dict(size=10),
            error_y=_errors(group["speedup"], group["speedup_lo"], group["speedup_hi"]),
            hovertemplate="%{text}: density %{x:.1%}, %{y:.2f}×<extra></extra>",
        ))
    low = max(min(summary["token_density"].min(), 1.0), 0.02)
    ideal_x = np.geomspace(low * 0.8, 1.0, 60)
    fig.add_trace(go.Scatter(x=ideal_x, y=1.0 / ideal_x, mode="lines", name="ideal: 1 / density",
                             line=dict(color="#555", dash="dot"), hoverinfo="skip"))
    fig.update_xaxes(**_log_axis(pd.Series(ideal_x), lambda v: f"{100 * v:g} %",
                                 "token density (allowed pairs / L²), log"))
    shown = pd.concat([summary["speedup"], summary["speedup_lo"], pd.Series(1.0 / ideal_x)])
    fig.update_yaxes(**_log_axis(shown, lambda v: f"{v:g}×", "speedup over the fastest dense kernel (log)"))
    return _styled(fig, "Speed vs density (every timed method)", height=520)


def phase_latency(phases: pd.DataFrame, resolutions: Sequence[str], colours: Mapping[str, str]) -> go.Figure:
    """Latency per transformer layer (sliding phase) of the methods that slide, one panel per resolution."""
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
                error_y=_errors(rows["median_ms"], rows["ci_lo_ms"], rows["ci_hi_ms"]),
            ), row=1, col=col)
            in_legend.add(method)
        fig.update_xaxes(title_text="layer (sliding offset = layer mod cycle)", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="median ms" if col == 1 else None, rangemode="tozero", row=1, col=col)
    return _styled(fig, "Latency per sliding phase (95 % CI)")


def traffic_bars(traffic: pd.DataFrame) -> go.Figure:
    """DRAM bytes per call (read + written) against the compulsory bytes, sorted, log axis in bytes."""
    traffic = traffic.sort_values("dram_bytes")
    names = _row_names(traffic)
    fig = go.Figure()
    fig.add_trace(go.Bar(y=names, x=traffic["dram_bytes"], orientation="h", name="DRAM read + written",
                         marker_color="#4c78a8", text=[fmt_bytes(v) for v in traffic["dram_bytes"]],
                         textposition="auto", hovertemplate="%{y}: %{text}<extra></extra>"))
    fig.add_trace(go.Scatter(y=names, x=traffic["compulsory_bytes"], mode="markers",
                             name="compulsory (Q, K, V read + O written once)",
                             text=[fmt_bytes(v) for v in traffic["compulsory_bytes"]],
                             hovertemplate="%{y}: compulsory %{text}<extra></extra>",
                             marker=dict(symbol="line-ns-open", size=22, color="black", line=dict(width=3))))
    both = pd.concat([traffic["dram_bytes"], traffic["compulsory_bytes"]])
    fig.update_xaxes(**_log_axis(both, fmt_bytes, "bytes per call (log)"))
    fig.update_yaxes(type="category", automargin=True)
    return _styled(fig, "DRAM traffic per call vs compulsory bytes", height=max(300, 30 * len(traffic) + 140),
                   margin=dict(l=20, r=20, t=60, b=60), legend=dict(orientation="h", y=-0.25))


def roofline(points: pd.DataFrame, ceilings) -> go.Figure:
    """Achieved effective TFLOP/s against arithmetic intensity per DRAM byte (filled) and per L2 byte (open),
    log-log, under the compute roof, the DRAM roof and the L2 roof when known (`reports.ceilings`)."""
    fig = go.Figure()
    points = points.sort_values(["intensity", "tflops_effective"])
    points = points.assign(_at=[LABEL_SIDES[i % len(LABEL_SIDES)] for i in range(len(points))])
    for level, column, symbol in (("DRAM", "intensity", "circle"), ("L2", "l2_intensity", "circle-open")):
        shown = points.dropna(subset=[column])
        if shown.empty:
            continue
        fig.add_trace(go.Scatter(
            x=shown[column], y=shown["tflops_effective"], mode="markers+text", name=f"per {level} byte",
            marker=dict(size=10, symbol=symbol, color=[category_colour(f) for f in shown["category"]],
                        line=dict(width=2, color=[category_colour(f) for f in shown["category"]])),
            text=[plot_text(v) for v in shown["label"]] if level == "DRAM" else None, textposition=list(shown["_at"]),
            textfont=dict(size=10), customdata=[plot_text(v) for v in shown["label"]],
            hovertemplate="%{customdata}: %{x:.3g} FLOP/" + level + " byte, %{y:.3g} TFLOP/s<extra></extra>"))
    xs = pd.concat([points["intensity"], points.get("l2_intensity", pd.Series(dtype=float))]).dropna()
    if ceilings is not None:
        low, high = xs.min() / 3, xs.max() * 3
        grid = np.geomspace(low, high, 80)
        for name, gbps, dash in (("DRAM roof", ceilings.gbps, "dash"), ("L2 roof", ceilings.l2_gbps, "dot")):
            if gbps:
                fig.add_trace(go.Scatter(x=grid, y=np.minimum(ceilings.tflops, grid * gbps / 1e3), mode="lines",
                                         name=name, line=dict(color="black", dash=dash), hoverinfo="skip"))
        xs = pd.Series([low, high])
    fig.update_xaxes(**_log_axis(xs, lambda v: f"{v:g}", "arithmetic intensity (effective FLOP per byte)"))
    ys = points["tflops_effective"] if ceilings is None else pd.concat([points["tflops_effective"],
                                                                       pd.Series([ceilings.tflops])])
    fig.update_yaxes(**_log_axis(ys, lambda v: f"{v:g}", "achieved effective TFLOP/s"))
    return _styled(fig, "Roofline (colour: kind of method, as in the other charts; ceilings: see the caption)",
                   height=480)


def energy_bars(power: pd.DataFrame) -> go.Figure:
    """Joules per call per method, sorted, one legend entry per kind of method."""
    power = power.sort_values("joules_per_call")
    power = power.assign(_name=_row_names(power))
    fig = go.Figure()
    for family, rows in power.groupby("category", sort=False, dropna=False):
        fig.add_trace(go.Bar(
            y=rows["_name"], x=rows["joules_per_call"], orientation="h", name=plot_text(family),
            marker_color=category_colour(family), customdata=rows["mean_watts"],
            hovertemplate="%{y}: %{x:.3g} J per call at %{customdata:.0f} W<extra></extra>"))
    fig.update_xaxes(title="joules per call", rangemode="tozero")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(power["_name"]), automargin=True)
    return _styled(fig, "Energy per attention call", height=max(300, 26 * len(power) + 140),
                   margin=dict(l=20, r=20, t=60, b=60), legend_title_text="kind of method")


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
TUNE_MARKS = (("chosen", "★"), ("default", "D"))  # cell marks: the stored config, the kernel's default


def tuning_heatmap(tune: pd.DataFrame, title: str) -> go.Figure:
    """Median ms per launch configuration (one value per cell, from the rows given: the caller picks which
    pass): rows block_m x block_n, columns num_warps x num_stages and the on/off knobs that were on. The
    stored configuration is marked ★, the kernel's default D."""
    tune = tune.sort_values(["block_m", "block_n", "num_warps", "num_stages"])
    blocks = tune.apply(lambda r: f"m{r.block_m:.0f} n{r.block_n:.0f}", axis=1)
    launch = tune.apply(lambda r: " ".join([f"w{r.num_warps:.0f} s{r.num_stages:.0f}"]
                                           + [flag for flag in TUNE_FLAGS if r.get(flag) in (True,)]), axis=1)
    marks = tune.apply(lambda r: "".join(mark for column, mark in TUNE_MARKS if r.get(column) is True), axis=1)
    cells = pd.DataFrame({"blocks": blocks, "launch": launch, "ms": tune["median_ms"], "mark": marks})
    grid = cells.pivot_table(index="blocks", columns="launch", values="ms", aggfunc="min", sort=False, dropna=False)
    mark = cells.pivot_table(index="blocks", columns="launch", values="mark", aggfunc="max", sort=False,
                             dropna=False).reindex_like(grid).fillna("")
    text = [[("" if math.isnan(v) else f"{v:.4g}{' ' + m if m else ''}") for v, m in zip(row, mrow)]
            for row, mrow in zip(grid.to_numpy(), mark.to_numpy())]
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), text=text, texttemplate="%{text}",
        colorscale="Viridis_r", colorbar=dict(title="ms"), hoverongaps=False,
        hovertemplate="%{y} %{x}: %{text} ms<extra></extra>",
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
