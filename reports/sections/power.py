"""Power and energy: joules per call, relative to the fastest dense kernel, and work per joule; and each
case's own conditions (clocks, power, temperature, throttle reasons while its timed calls ran).

Energy comes from `harness.measure.power.measure_energy` (the NVML energy counter over a window of calls;
"schedule": "interleaved" where the runner interleaved it). Conditions are the row's own "conditions"
(schema 2); a row without them says "not recorded" (the older run-wide sampler summary is not shown per
row: it was one reading copied into every case). Under a power cap, a case whose mean power is within
`AT_CAP` of the cap spent energy = time x cap, which the page says.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import (NOT_RECORDED, fmt_celsius, fmt_float, fmt_gflop_per_j, fmt_int, fmt_joules,
                                fmt_mhz_int, fmt_ratio, fmt_text, fmt_watts, number_or_none)
from reports.rows import dig, method_summary, timed_kernels
from reports.run import Run
from reports.sections.common import CASE_COLUMNS, missing_measurement_note
from reports.tables import Column, build_table

ID, TITLE = "power", "Power and energy"
AT_CAP = 0.03  # mean power within 3 % of the cap: energy is time x cap


def _recorded(render):
    def show(value) -> str:
        return NOT_RECORDED if number_or_none(value) is None else render(value)

    return show


def _reasons(value: object) -> str:
    return ", ".join(fmt_text(v) for v in value) or "none" if isinstance(value, list) else NOT_RECORDED


COLUMNS = [
    *CASE_COLUMNS,
    Column("joules_per_call", "energy per call", fmt_joules, numeric=True),
    Column("joules_per_call_se", "± standard error", fmt_joules, numeric=True,
           tip="of the interleaved energy split (a least-squares fit over segments); absent for back-to-back windows"),
    Column("vs_dense", "energy vs fastest dense", fmt_ratio, numeric=True,
           tip="J per call / J per call of the fastest dense kernel at the same size (below 1× uses less)"),
    Column("gflop_per_j", "work per energy", fmt_gflop_per_j, numeric=True,
           tip="effective FLOPs / J (= effective TFLOP/s per kW): performance per watt"),
    Column("mean_watts", "mean power", fmt_watts, numeric=True, tip="energy / window over the energy window"),
    Column("at_cap", "at the cap", fmt_text, tip=f"mean power within {AT_CAP:.0%} of the power cap: energy = time x cap"),
    Column("power_window_s", "energy window s", fmt_float, numeric=True),
    Column("sm_mhz_median", "SM clock (median)", _recorded(fmt_mhz_int), numeric=True,
           tip="this case's own NVML samples while its timed calls ran"),
    Column("sm_mhz_min", "SM clock (min)", _recorded(fmt_mhz_int), numeric=True),
    Column("cond_watts_max", "max power while timed", _recorded(fmt_watts), numeric=True),
    Column("temp_c_max", "max temperature", _recorded(fmt_celsius), numeric=True),
    Column("throttle_reasons", "clock-event reasons", _reasons),
    Column("cond_samples", "NVML samples", _recorded(fmt_int), numeric=True),
]


CONDITION_COLUMNS = -6  # the last six: shown only when some case recorded its conditions


def _with_energy_metrics(run: Run, measured: pd.DataFrame) -> pd.DataFrame:
    summary = method_summary(timed_kernels(run.frame))
    dense = summary[summary["dense_reference"] & (summary["label"] == summary["fastest_dense_label"])]
    dense_j = {}
    for resolution, label in zip(dense["resolution"], dense["label"]):
        rows = measured[(measured["resolution"] == resolution) & (measured["label"] == label)]
        dense_j[resolution] = rows["joules_per_call"].mean()
    cap = number_or_none(dig(run.env, ("nvml", "power_limit_w")))
    at_cap = (measured["mean_watts"] - cap).abs() <= AT_CAP * cap if cap else pd.Series(False, index=measured.index)
    return measured.assign(
        vs_dense=measured["joules_per_call"] / measured["resolution"].map(dense_j).astype(float),
        gflop_per_j=measured["effective_flops"] / measured["joules_per_call"] / 1e9,
        at_cap=[("yes" if flag else "no") if pd.notna(w) and cap else "—" for flag, w in zip(at_cap, measured["mean_watts"])])


NOISY_SE = 0.10  # relative standard error above which a per-case energy is not a figure to compare


def energy_noise(measured: pd.DataFrame) -> str | None:
    """A warning when the interleaved energy split is too noisy to compare cases (its per-case standard
    error is relative to a ~100 ms NVML counter step shared by all cases of a segment)."""
    if "joules_per_call_se" not in measured:
        return None
    relative = (measured["joules_per_call_se"] / measured["joules_per_call"]).dropna()
    if relative.empty or relative.median() <= NOISY_SE:
        return None
    return (f"The interleaved energy split is noisy in this run: median standard error {relative.median():.0%} of "
            f"the energy per call (up to {relative.max():.0%}). Compare energy between methods only where the "
            "intervals do not overlap; mean power and the clock columns come from each case's own timed calls.")


def section(run: Run) -> Section:
    frame = run.frame[run.frame["kind"] == "kernel"]  # e2e energy per image is in the end-to-end section
    measured = frame[frame[["joules_per_call", "sm_mhz_median"]].notna().any(axis=1)].copy()
    if measured.empty:
        return Section.empty(ID, TITLE, missing_measurement_note(frame, "power or clock readings (NVML)",
                                                                 "power_status", "power_reason"))
    measured = _with_energy_metrics(run, measured)
    result = Section(ID, TITLE)
    cap = number_or_none(dig(run.env, ("nvml", "power_limit_w")))
    capped = (measured["at_cap"] == "yes").sum()
    if capped:
        result.add(Paragraph(f"{capped} of {len(measured)} cases ran at the {fmt_watts(cap)} power cap (mean power "
                             f"within {AT_CAP:.0%} of it): their energy is simply time x cap, so energy ranks them "
                             "as latency does; work per energy is the figure that separates methods.", css="warning"))
    schedules = Counter(measured["power_schedule"].fillna("a back-to-back window per case"))
    no_conditions = measured["sm_mhz_median"].isna().sum()
    note = f"Energy measured as: {', '.join(schedules)}."
    if no_conditions == len(measured):
        note += (" No case carries its own conditions (clocks, power and temperature while its timed calls ran): "
                 "not recorded in this run, so those columns are left out.")
    elif no_conditions:
        note += (f" {no_conditions} case(s) carry no conditions of their own (clocks, power and temperature while "
                 "their timed calls ran): shown as \"not recorded\".")
    result.add(Paragraph(note, css="caveat"))
    noisy = energy_noise(measured)
    if noisy:
        result.add(Paragraph(noisy, css="warning"))
    columns = COLUMNS if no_conditions < len(measured) else COLUMNS[:CONDITION_COLUMNS]
    result.add(build_table(measured, columns, caption="Energy per call and each case's own conditions"))
    energy = measured.dropna(subset=["joules_per_call"])
    if energy.empty:
        result.add(Paragraph(missing_measurement_note(frame, "energy per call", "power_status", "power_reason"),
                             css="note"))
    else:
        result.add_figure(figures.energy_bars(energy))
    return result
