"""Correctness of every checked row, and the locality statistics rows carry.

Correctness compares each method with the exact masked reference (docs/contracts.md); a failed check is
what makes a row "incorrect", which keeps it out of every speedup. Locality dicts are shown as recorded
under human names (`reports.names`), since their metrics grow with `baselines.locality`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from reports.blocks import Section
from reports.formatting import fmt_float, fmt_int, fmt_passed, fmt_sci, fmt_text, number_or_none
from reports.names import human_name
from reports.rows import flatten
from reports.run import Run
from reports.sections.common import CASE_COLUMNS, missing_measurement_note
from reports.tables import Column, build_table

CORRECTNESS_ID, CORRECTNESS_TITLE = "correctness", "Correctness"
LOCALITY_ID, LOCALITY_TITLE = "locality", "Locality"
LOCALITY_HIDDEN = {"radii", "seed"}  # restated by the column names, or bookkeeping

CORRECTNESS_COLUMNS = [
    Column("case", "case"), Column("label", "method"), Column("status", "status"),
    Column("rel_err", "relative error", fmt_sci, numeric=True),
    Column("max_abs_err", "max abs error", fmt_sci, numeric=True),
    Column("tol", "tolerance", fmt_sci, numeric=True),
    Column("passed", "passed", fmt_passed),
    Column("rows_checked", "rows checked", fmt_int, numeric=True),
    Column("reference", "reference"),
]


def _check_class(record: Mapping) -> str:
    return {True: "check-passed", False: "check-failed"}.get(record["passed"], "check-none")


def correctness_section(run: Run) -> Section:
    frame = run.frame
    has_verdict = frame["passed"].map(lambda value: isinstance(value, bool))
    checked = frame[frame["rel_err"].notna() | frame["tol"].notna() | has_verdict]
    if checked.empty:
        return Section.empty(CORRECTNESS_ID, CORRECTNESS_TITLE, "No row in this run carries a correctness check.")
    unchecked = len(frame) - len(checked)
    caption = "Every row with a correctness check against the exact masked reference"
    if unchecked:
        caption += f"; {unchecked} row(s) carry none (tuning, locality or rows that never ran)"
    result = Section(CORRECTNESS_ID, CORRECTNESS_TITLE)
    result.add(build_table(checked, CORRECTNESS_COLUMNS, caption=caption, row_class=_check_class))
    return result


def _fmt_locality(value: object) -> str:
    return fmt_text(value) if number_or_none(value) is None else fmt_float(value)


def locality_section(run: Run) -> Section:
    frame = run.frame
    # a locality dict whose status is not ok is a measurement that could not be made ({"status", "reason"})
    measured = (frame["locality"].map(lambda v: isinstance(v, Mapping) and bool(v))
                & (frame["locality_status"].fillna("ok") == "ok"))
    carriers = frame[measured]
    if carriers.empty:
        return Section.empty(LOCALITY_ID, LOCALITY_TITLE, missing_measurement_note(
            frame, "locality statistics", "locality_status", "locality_reason"))
    flat = [{k: v for k, v in flatten(value).items() if k not in LOCALITY_HIDDEN} for value in carriers["locality"]]
    keys = list(dict.fromkeys(key for record in flat for key in record))
    metrics = pd.DataFrame.from_records(flat, columns=keys).add_prefix("locality:")
    table = pd.concat([carriers.reset_index(drop=True), metrics], axis=1)
    columns = [*CASE_COLUMNS, *(Column(f"locality:{key}", human_name(key), _fmt_locality, numeric=True) for key in keys)]
    result = Section(LOCALITY_ID, LOCALITY_TITLE)
    result.add(build_table(table, columns, caption="Locality of each method's token order, as recorded"))
    return result
