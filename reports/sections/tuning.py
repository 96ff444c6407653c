"""Block-size tuning (rows of kind "tune"): a heatmap of median ms per launch configuration.

One heatmap per kernel and problem size; blank cells are configurations that failed or were not timed.
The table names the configuration `harness tune` stored for each (its final head-to-head against the default
decides, so it is not always the lowest median of the coarse passes), or the fastest when none is marked.
"""

from __future__ import annotations

import pandas as pd

from reports import figures
from reports.blocks import Section
from reports.formatting import fmt_int, fmt_ms
from reports.run import Run
from reports.tables import Column, build_table

ID, TITLE = "tuning", "Block-size tuning"
LAUNCH_PARAMS = ["block_m", "block_n", "num_warps", "num_stages"]

BEST_COLUMNS = [
    Column("method", "kernel"), Column("resolution", "resolution"), Column("config", "chosen config"),
    Column("median_ms", "median ms", fmt_ms, numeric=True),
    Column("tried", "configs tried", fmt_int, numeric=True), Column("timed", "configs timed", fmt_int, numeric=True),
]


def _fastest(method: str, resolution: str, group: pd.DataFrame) -> dict:
    timed = group.dropna(subset=["median_ms"])
    record = {"method": method, "resolution": resolution, "config": "none timed", "median_ms": None,
              "tried": len(group), "timed": len(timed)}
    if not timed.empty:
        chosen = timed[timed["chosen"] == True] if "chosen" in timed else timed.iloc[:0]  # noqa: E712 (object column)
        best = chosen.iloc[0] if not chosen.empty else timed.loc[timed["median_ms"].idxmin()]
        record["config"] = best["label"]
        record["median_ms"] = best["median_ms"]
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
    fastest = pd.DataFrame.from_records([_fastest(method, res, group) for (method, res), group in groups])
    result.add(build_table(fastest, BEST_COLUMNS, caption="Fastest launch configuration per kernel and size"))
    for (method, resolution), group in groups:
        if group["median_ms"].notna().any():
            result.add_figure(figures.tuning_heatmap(group, f"{method} at {resolution}: median ms per config"))
    return result
