"""The plain summary at the top of the page: card, suite, date, commit and how many cases ended ok."""

from __future__ import annotations

from collections import Counter

from reports.blocks import Definitions, Paragraph, Section
from reports.formatting import MISSING
from reports.rows import STATUS_OK
from reports.run import Run

ID, TITLE = "summary", "Summary"


def _commit_text(run: Run) -> str:
    if run.commit is None:
        return MISSING
    return f"{run.commit}{' (with uncommitted changes)' if run.dirty else ''}"


def section(run: Run) -> Section:
    statuses = Counter(run.frame["status"])
    total, ok = len(run.frame), statuses.get(STATUS_OK, 0)
    others = ", ".join(f"{count} {status}" for status, count in statuses.most_common() if status != STATUS_OK)
    items = [
        ("card", run.card or MISSING),
        ("suite", str(run.results.get("suite") or MISSING)),
        ("run", run.name),
        ("date", str(run.results.get("created") or MISSING)),
        ("commit", _commit_text(run)),
        ("cases", f"{total} in all: {ok} ok" + (f", {others}" if others else "")),
    ]
    if not total:
        verdict = Paragraph("The run has no cases.", css="warning")
    elif ok == total:
        verdict = Paragraph(f"All {total} cases ended ok.", css="ok")
    else:
        verdict = Paragraph(f"{total - ok} of {total} cases did not end ok: see the list of failed, skipped "
                            "and unavailable cases.", css="warning")
    return Section(ID, TITLE, [Definitions(items), verdict])
