"""Every case that did not end "ok" (failed, skipped, unavailable, incorrect), with its reason."""

from __future__ import annotations

from reports.blocks import Section
from reports.rows import STATUS_OK
from reports.run import Run
from reports.tables import Column, build_table, status_class

ID, TITLE = "problems", "Failed, skipped and unavailable cases"
COLUMNS = [Column("case", "case"), Column("kind", "kind"), Column("label", "method"),
           Column("status", "status"), Column("reason", "reason")]


def section(run: Run) -> Section:
    frame = run.frame
    problems = frame[frame["status"] != STATUS_OK]
    if problems.empty:
        return Section.empty(ID, TITLE, f"All {len(frame)} cases ended ok.")
    result = Section(ID, TITLE)
    result.add(build_table(problems, COLUMNS, caption=f"{len(problems)} of {len(frame)} cases did not end ok",
                           row_class=status_class))
    return result
