"""Anomalies flagged from the data (`reports.anomalies`): one row per flag with its one-line why."""

from __future__ import annotations

import pandas as pd

from reports.anomalies import find_anomalies
from reports.blocks import Section
from reports.run import Run
from reports.tables import Column, build_table

ID, TITLE = "anomalies", "Anomalies"
COLUMNS = [Column("what", "check"), Column("case", "case"), Column("why", "why")]


def section(run: Run) -> Section:
    flags = find_anomalies(run.frame, run.results)
    if not flags:
        return Section.empty(ID, TITLE, "No anomaly found: traffic within 1-10x compulsory, power within the cap, "
                                        "setup times in line, phase spreads within the A/A limit, A/A pairs agree "
                                        "(where the run recorded these).")
    frame = pd.DataFrame([flag.__dict__ for flag in flags])
    result = Section(ID, TITLE)
    result.add(build_table(frame, COLUMNS, caption=f"{len(flags)} flag(s), computed from this run's data"))
    return result
