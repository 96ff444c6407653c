"""Block-size tuning (rows of kind "tune"): which launch configuration was stored, by what rule, and a
heatmap of every configuration with the stored (★) and default (D) cells marked.

The rule (harness/apps/tune/search.py): a coarse pass times every correct candidate, the top k plus the default
are timed again and the fastest median wins, then the winner and the default are timed head to head and
the default is kept if it wins. So the stored configuration is not "the lowest number in the heatmap": a
coarse-pass median with few samples can look faster. The heatmap shows each configuration's last pass.
"""

from __future__ import annotations

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_int, fmt_interval, fmt_ms, fmt_ratio, fmt_text
from reports.run import Run
from reports.tables import Column, build_table

ID, TITLE = "tuning", "Block-size tuning"
LAUNCH_PARAMS = ["block_m", "block_n", "num_warps", "num_stages"]
STAGE_ORDER = {"coarse": 0, "refine": 1, "final": 2}  # later passes time with more samples
RULE = ("Rule: the fastest median of the refine pass (top candidates plus the default) wins, then winner and "
        "default are timed head to head, interleaved; the default is stored if it wins. ★ = stored, D = default.")

STORED_COLUMNS = [
    Column("method", "kernel"), Column("resolution", "size"),
    Column("chosen_label", "stored config"), Column("chosen_ms", "stored: median ms", fmt_ms, numeric=True),
    Column("chosen_ci", "stored: 95 % CI"),
    Column("default_label", "default config"), Column("default_ms", "default: median ms", fmt_ms, numeric=True),
    Column("default_ci", "default: 95 % CI"),
    Column("gain", "default / stored", fmt_ratio, numeric=True, tip="head-to-head medians of the final pass"),
    Column("overlap", "intervals overlap", tip="if the two CIs overlap, the run cannot tell them apart"),
    Column("tried", "configs tried", fmt_int, numeric=True),
]


def _last_pass(group: pd.DataFrame) -> pd.DataFrame:
    """Each configuration's row from the last pass that timed it."""
    order = group["tune_stage"].map(STAGE_ORDER).fillna(-1)
    return group.assign(_order=order).sort_values("_order", kind="stable").drop_duplicates("label", keep="last")


def _stored(method: str, resolution: str, group: pd.DataFrame) -> dict:
    record = {"method": method, "resolution": resolution, "tried": group["label"].nunique()}
    for role in ("chosen", "default"):
        rows = group[group[role] == True]  # noqa: E712 (object column)
        row = rows.iloc[0] if not rows.empty else None
        record[f"{role}_label"] = row["label"] if row is not None else "not marked"
        record[f"{role}_ms"] = row["median_ms"] if row is not None else None
        record[f"{role}_ci"] = fmt_interval(row["ci_lo_ms"], row["ci_hi_ms"]) if row is not None else fmt_text(None)
        record[f"_{role}"] = row
    chosen, default = record.pop("_chosen"), record.pop("_default")
    record["gain"] = default["median_ms"] / chosen["median_ms"] if chosen is not None and default is not None else None
    if chosen is not None and default is not None and not pd.isna(chosen["ci_lo_ms"]) and not pd.isna(default["ci_lo_ms"]):
        overlap = chosen["ci_lo_ms"] <= default["ci_hi_ms"] and default["ci_lo_ms"] <= chosen["ci_hi_ms"]
        record["overlap"] = "yes: not distinguishable" if overlap else "no"
    else:
        record["overlap"] = fmt_text(None)
    return record


def section(run: Run) -> Section:
    frame = run.frame
    tune = frame[frame["kind"] == "tune"]
    if tune.empty:
        return Section.empty(ID, TITLE, "No tuning rows (kind 'tune') in this run.")
    tune = tune.dropna(subset=LAUNCH_PARAMS).fillna({"resolution": "any size"})
    if tune.empty:
        return Section.empty(ID, TITLE, "Tuning rows carry no block_m/block_n/num_warps/num_stages params.")
    # A configuration that failed or was incorrect has no time worth showing: a blank cell.
    tune = tune.assign(median_ms=tune["median_ms"].where(tune["status"] == "ok"))
    groups = list(tune.groupby(["method", "resolution"], sort=False))
    result = Section(ID, TITLE)
    result.add(Paragraph(RULE, css="caveat"))
    stored = pd.DataFrame.from_records([_stored(method, res, _last_pass(group))
                                        for (method, res), group in groups])
    result.add(build_table(stored, STORED_COLUMNS, caption="Stored launch configuration per kernel and size, "
                                                           "against the default (final head-to-head pass)"))
    for (method, resolution), group in groups:
        if group["median_ms"].notna().any():
            result.add_figure(figures.tuning_heatmap(_last_pass(group),
                                                     f"{method} at {resolution}: median ms per config (last pass)"))
    return result
