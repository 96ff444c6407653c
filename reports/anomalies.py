"""Anomaly flags computed from the data, each with a one-line why (`Flag`); `find_anomalies(run)` lists them.

Checks (`CHECKS`, each a function of the run's tidy frame and results dict):
- DRAM traffic above `TRAFFIC_HIGH` x or below 1 x the compulsory bytes (Q, K, V read and O written once);
- power readings above the card's power cap (one flag for the run, counting the cases);
- a method's layout or first-call (compile) time above `SETUP_FACTOR` x the median method's;
- a method whose per-phase medians spread wider than the A/A limit (results "aa_pairs" limit_pct, else
  `DEFAULT_AA_LIMIT_PCT`): the phases differ by more than the run can tell apart from noise;
- an A/A pair (one method timed twice) that disagrees: the run cannot resolve differences that small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd

from reports.formatting import fmt_bytes, fmt_duration, fmt_interval, fmt_pct, fmt_ratio, fmt_watts, number_or_none
from reports.rows import dig

TRAFFIC_HIGH = 10.0
SETUP_FACTOR = 10.0
DEFAULT_AA_LIMIT_PCT = 1.5


@dataclass(frozen=True)
class Flag:
    case: str
    what: str  # a short name of the check
    why: str  # one line, with the numbers


def aa_limit_pct(results: dict) -> float:
    """The A/A limit of the run (the first pair's limit_pct), else the default."""
    pairs = results.get("aa_pairs") if isinstance(results.get("aa_pairs"), list) else []
    limits = [number_or_none(pair.get("limit_pct")) for pair in pairs if isinstance(pair, dict)]
    return next((limit for limit in limits if limit is not None), DEFAULT_AA_LIMIT_PCT)


def _where(record: dict) -> str:
    return f"{record['label']} at {record['resolution']}" if record.get("resolution") else str(record["label"])


def _traffic(frame: pd.DataFrame, results: dict) -> Iterator[Flag]:
    rows = frame.dropna(subset=["dram_bytes", "compulsory_bytes"])
    for record in rows[rows["compulsory_bytes"] > 0].to_dict("records"):
        ratio = record["dram_bytes"] / record["compulsory_bytes"]
        moved = f"{fmt_bytes(record['dram_bytes'])} of DRAM traffic per call"
        if ratio > TRAFFIC_HIGH:
            yield Flag(record["case"], "traffic far above compulsory",
                       f"{_where(record)}: {moved}, {fmt_ratio(ratio)} the compulsory "
                       f"{fmt_bytes(record['compulsory_bytes'])}: K/V re-read from DRAM instead of L2")
        elif ratio < 1.0:
            yield Flag(record["case"], "traffic below compulsory",
                       f"{_where(record)}: {moved}, under the compulsory {fmt_bytes(record['compulsory_bytes'])}: "
                       "ncu did not see all of the call's work (inputs left in L2, or kernels not captured)")


def _power(frame: pd.DataFrame, results: dict) -> Iterator[Flag]:
    """One flag for the run: how many cases read above the cap, and the highest reading."""
    cap = number_or_none(dig(results, ("env", "nvml", "power_limit_w")))
    if not cap:
        return
    peak = frame[["cond_watts_max", "max_watts"]].max(axis=1)
    over = frame[peak > cap]
    if not over.empty:
        worst = over.loc[peak[over.index].idxmax()]
        yield Flag(f"{len(over)} case(s)", "power above the cap",
                   f"{len(over)} of {int(peak.notna().sum())} cases read above the {fmt_watts(cap)} cap, up to "
                   f"{fmt_watts(peak.max())} ({_where(worst)}): instant samples overshoot a cap enforced on "
                   "average, so these cases ran power-limited (energy ~ time x cap)")


def _setup(frame: pd.DataFrame, results: dict) -> Iterator[Flag]:
    """Each method's cold (largest) one-off time against the median of the methods' cold times: later layers
    of a method reuse its compiled kernel and cached layout, so their times are not a fair median."""
    for column, name in (("setup_layout_ms", "layout"), ("setup_first_call_ms", "first call (compile)")):
        rows = frame.dropna(subset=[column])
        if rows.empty:
            continue
        cold = rows.loc[rows.groupby(["resolution", "method"], dropna=False)[column].idxmax()]
        if len(cold) < 3:
            continue
        median = cold[column].median()
        for record in cold[cold[column] > SETUP_FACTOR * median].to_dict("records"):
            yield Flag(record["case"], f"{name} time out of line",
                       f"{_where(record)}: {name} took {fmt_duration(record[column])}, "
                       f"{fmt_ratio(record[column] / median)} the median method's ({fmt_duration(median)})")


def _phase_spread(frame: pd.DataFrame, results: dict) -> Iterator[Flag]:
    limit = aa_limit_pct(results)
    timed = frame[(frame["kind"] == "kernel") & (frame["status"] == "ok") & frame["median_ms"].notna()]
    for (resolution, method), rows in timed.groupby(["resolution", "method"], sort=False):
        if rows["layer"].nunique() < 2:
            continue
        spread = rows["median_ms"].max() / rows["median_ms"].min() - 1
        if 100 * spread > limit:
            slow, fast = rows.loc[rows["median_ms"].idxmax()], rows.loc[rows["median_ms"].idxmin()]
            yield Flag(f"{resolution}/{method}", "phase spread beyond the A/A limit",
                       f"{rows['label'].iloc[0]} at {resolution}: layer {slow['layer']:.0f} is {fmt_pct(spread)} "
                       f"slower than layer {fast['layer']:.0f} (A/A limit {limit:g} %): quote the mean over phases")


def _aa_pairs(frame: pd.DataFrame, results: dict) -> Iterator[Flag]:
    pairs = results.get("aa_pairs") if isinstance(results.get("aa_pairs"), list) else []
    for pair in pairs:
        if isinstance(pair, dict) and pair.get("agree") is False:
            ci = pair.get("ci95") if isinstance(pair.get("ci95"), list) else [None, None]
            yield Flag(f"{pair.get('a')} / {pair.get('b')}", "A/A pair disagrees",
                       f"the same method timed twice differs: ratio {fmt_ratio(pair.get('ratio'))}, 95 % CI "
                       f"{fmt_interval(*ci[:2], fmt_ratio)}, beyond ±{pair.get('limit_pct')} %: this run cannot "
                       "resolve differences that small (the gate treats it as unusable)")


CHECKS: tuple[Callable[[pd.DataFrame, dict], Iterator[Flag]], ...] = (_aa_pairs, _traffic, _power, _setup,
                                                                      _phase_spread)


def find_anomalies(frame: pd.DataFrame, results: dict) -> list[Flag]:
    return [flag for check in CHECKS for flag in check(frame, results)]
