"""HilbertA's speedup over each baseline family, on one phase basis, with its interval and phase spread.

The baseline of a family is picked by a rule stated on the page (`FAMILIES`): dense is the fastest dense
reference of the run (named); sliding tiles, neighbourhood attention, FA4 block-sparse and the raster-order
control are the configuration whose token density is nearest HilbertA's (a speedup at another density says
little; see baselines/matched_density.py). Every number uses `reports.rows.PHASE_BASIS`; the spread is the
speedup phase by phase (layer i against layer i where the baseline slides too, else against its one time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from reports.rows import STATUS_OK, method_summary, resolution_order, timed_kernels

HILBERTA_CATEGORY = "hilberta"
# A mask through FA4's block sparsity has fa4 as a word of its name (hilberta_fa4_t16, sta_fa4, na_fa4_k17);
# hilberta_fa4split_t16 (HilbertA as dense FA4 pieces and our merge) is one of HilbertA's own implementations.
FA4_BLOCK_SPARSE = r"(?:^|_)fa4(?:_|$)"


def _is_fa4(rows: pd.DataFrame) -> pd.Series:
    """The rows of a mask run through FA4 block sparsity (not FA4 dense, not our compositions of FA4 calls)."""
    return rows["method"].str.contains(FA4_BLOCK_SPARSE, regex=True) & ~rows["dense_reference"].astype(bool)


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    members: Callable[[pd.DataFrame], pd.Series]
    rule: str  # "fastest" | "matched density"
    optional: bool = False  # listed only when the run has such rows


# Sliding tiles and neighbourhood attention count every implementation of their mask (our Triton STA, Flex,
# FA4 block-sparse): at equal density the faster one is the baseline. The FA4 row is HilbertA's own mask
# through FA4 block sparsity: the sparse peer to beat.
FAMILIES = (
    Family("dense", "dense attention", lambda f: f["dense_reference"].astype(bool), "fastest"),
    Family("sliding_tile", "sliding tiles (STA)", lambda f: f["category"] == "sliding_tile", "matched density"),
    Family("neighborhood", "neighbourhood attention", lambda f: f["category"] == "neighborhood", "matched density"),
    Family("fa4", "FA4 block-sparse, same mask", lambda f: (f["category"] == HILBERTA_CATEGORY) & _is_fa4(f),
           "matched density", optional=True),
    Family("control", "raster-order control", lambda f: (f["category"] == "control") & ~_is_fa4(f),
           "matched density"),
)


def hilberta_rows(frame: pd.DataFrame) -> pd.Series:
    return (frame["category"] == HILBERTA_CATEGORY) & ~_is_fa4(frame)


def _pick(candidates: pd.DataFrame, rule: str, density: float) -> pd.Series:
    if rule == "matched density" and not math.isnan(density) and candidates["token_density"].notna().any():
        distance = (candidates["token_density"] - density).abs()
        return candidates.assign(_d=distance).sort_values(["_d", "median_ms"]).iloc[0]
    return candidates.loc[candidates["median_ms"].idxmin()]


def _phase_spread(kernels: pd.DataFrame, resolution: str, ours: str, theirs: str) -> tuple[float, float]:
    """min and max over HilbertA's phases of baseline time / HilbertA time (same layer where both have it)."""
    at = kernels[kernels["resolution"] == resolution]
    mine = at[at["method"] == ours].groupby("layer")["median_ms"].mean()
    base = at[at["method"] == theirs].groupby("layer")["median_ms"].mean()
    if mine.empty or base.empty:
        return math.nan, math.nan
    ratios = [(base[layer] if layer in base.index else base.mean()) / ms for layer, ms in mine.items()]
    return min(ratios), max(ratios)


def _unavailable_reason(frame: pd.DataFrame, family: Family, resolution: str) -> str:
    members = frame[(frame["kind"] == "kernel") & family.members(frame)]
    rows = members[members["resolution"] == resolution]
    if rows.empty:
        return "not timed at this size" if not members.empty else "not in this run"
    bad = rows[rows["status"] != STATUS_OK]
    if bad.empty:
        return "no timing"
    first = bad.iloc[0]
    return f"{first['label']}: {first['status']}" + (f" ({first['reason']})" if first["reason"] else "")


def family_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (resolution, family): HilbertA's best variant over that family's baseline.

    Columns: resolution, family, rule, hilberta, hilberta_ms, hilberta_density, baseline, baseline_ms,
    baseline_density, speedup, speedup_lo, speedup_hi, spread_lo, spread_hi, phases, note (why a family
    has no baseline). Empty when no HilbertA kernel was timed.
    """
    kernels = timed_kernels(frame)
    summary = method_summary(kernels)
    records = []
    for resolution in resolution_order(kernels):
        at = summary[summary["resolution"] == resolution]
        ours = at[hilberta_rows(at)]
        if ours.empty:
            continue
        best = ours.loc[ours["median_ms"].idxmin()]
        for family in FAMILIES:
            members = at[family.members(at)]
            record = {"resolution": resolution, "family": family.title, "rule": family.rule,
                      "hilberta": best["label"], "hilberta_ms": best["median_ms"],
                      "hilberta_density": best["token_density"], "phases": best["phases"]}
            if members.empty:
                if family.optional and not family.members(frame).any():
                    continue
                records.append({**record, "note": _unavailable_reason(frame, family, resolution)})
                continue
            base = _pick(members, family.rule, best["token_density"])
            spread = _phase_spread(kernels, resolution, best["method"], base["method"])
            records.append({**record, "baseline": base["label"], "baseline_ms": base["median_ms"],
                            "baseline_density": base["token_density"], "note": "",
                            "speedup": base["median_ms"] / best["median_ms"],
                            "speedup_lo": base["ci_lo_ms"] / best["ci_hi_ms"],
                            "speedup_hi": base["ci_hi_ms"] / best["ci_lo_ms"],
                            "spread_lo": spread[0], "spread_hi": spread[1]})
    columns = ["resolution", "family", "rule", "hilberta", "hilberta_ms", "hilberta_density", "baseline",
               "baseline_ms", "baseline_density", "speedup", "speedup_lo", "speedup_hi", "spread_lo", "spread_hi",
               "phases", "note"]
    return pd.DataFrame.from_records(records, columns=columns)
