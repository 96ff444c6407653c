"""Power and energy: joules per call and mean watts (NVML energy counter), clocks and throttle reasons.

Energy comes from `harness.measure.power.measure_energy` (a window of back-to-back calls); clocks and throttle
reasons from the sampler that ran while the case was timed, so a power-capped run is obvious at a glance:
every reason seen in any case is counted above the table.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import MISSING, fmt_float, fmt_int, fmt_text
from reports.run import Run
from reports.sections.common import CASE_COLUMNS, missing_measurement_note
from reports.tables import Column, build_table

ID, TITLE = "power", "Power and energy"
# Reasons seen while the GPU worked; a snapshot taken afterwards shows an idle GPU, not throttling.
REASON_COLUMNS = ("throttle_reasons_energy", "throttle_reasons_timing")
MEASURED_COLUMNS = ["joules_per_call", "mean_watts", "sm_mhz_median"]


def _reasons(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [fmt_text(item) for item in value]
    return [] if value is None else [fmt_text(value)]


def _row_reasons(record) -> list[str] | None:
    """Reasons seen in a case (energy window and timing), None when neither was recorded."""
    recorded = [record[column] for column in REASON_COLUMNS if record[column] is not None]
    if not recorded:
        return None
    return list(dict.fromkeys(reason for value in recorded for reason in _reasons(value)))


def _fmt_reasons(value: object) -> str:
    return MISSING if value is None else ", ".join(value) or "none"


COLUMNS = [
    *CASE_COLUMNS,
    Column("joules_per_call", "J per call", fmt_float, numeric=True),
    Column("mean_watts", "mean W", fmt_float, numeric=True),
    Column("max_watts", "max W", fmt_float, numeric=True),
    Column("power_calls", "calls", fmt_int, numeric=True),
    Column("power_window_s", "window s", fmt_float, numeric=True),
    Column("sm_mhz_median", "SM MHz (median while timed)", fmt_int, numeric=True),
    Column("sm_mhz_min", "SM MHz (min)", fmt_int, numeric=True),
    Column("temp_c_max", "max °C", fmt_int, numeric=True),
    Column("reasons", "throttle reasons", _fmt_reasons),
    Column("energy_source", "energy source"),
]


def section(run: Run) -> Section:
    frame = run.frame[run.frame["kind"] == "kernel"]  # e2e energy per image is in the end-to-end section
    measured = frame[frame[MEASURED_COLUMNS].notna().any(axis=1)].copy()
    if measured.empty:
        return Section.empty(ID, TITLE, missing_measurement_note(frame, "power or clock readings (NVML)",
                                                                 "power_status", "power_reason"))
    measured["reasons"] = pd.Series([_row_reasons(r) for r in measured.to_dict("records")], index=measured.index,
                                    dtype=object)
    result = Section(ID, TITLE)
    seen = Counter(reason for reasons in measured["reasons"] if reasons for reason in reasons)
    if seen:
        listed = ", ".join(f"{reason} ({count} case{'s' if count > 1 else ''})" for reason, count in seen.most_common())
        result.add(Paragraph(f"Clock-event (throttle) reasons seen: {listed}.", css="warning"))
    else:
        result.add(Paragraph("No throttle reason was recorded in any case.", css="note"))
    result.add(build_table(measured, COLUMNS, caption="Energy over a window of back-to-back calls; clocks "
                                                      "while the case was timed"))
    energy = measured.dropna(subset=["joules_per_call"])
    if energy.empty:
        result.add(Paragraph(missing_measurement_note(frame, "energy per call", "power_status", "power_reason"),
                             css="note"))
    else:
        result.add_figure(figures.energy_bars(energy))
    return result
