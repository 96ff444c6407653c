"""Helpers shared by the section builders: frequently used column sets and "why is this empty" notes."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from reports.formatting import fmt_int, fmt_text
from reports.tables import Column

# Columns that say which case a table row is.
CASE_COLUMNS = (
    Column("label", "method"),
    Column("resolution", "resolution"),
    Column("layer", "layer", fmt_int, numeric=True),
)


def reason_summary(frame: pd.DataFrame, reason_column: str, limit: int = 3) -> str:
    """The most common reasons in ``frame[reason_column]``, with counts: "ncu not found (12 cases)"."""
    reasons = Counter(fmt_text(reason) for reason in frame[reason_column].dropna())
    parts = [f"{reason} ({count} case{'s' if count > 1 else ''})" for reason, count in reasons.most_common(limit)]
    if len(reasons) > limit:
        parts.append(f"{len(reasons) - limit} other reason(s)")
    return "; ".join(parts)


def missing_measurement_note(frame: pd.DataFrame, what: str, status_column: str, reason_column: str) -> str:
    """Why a measurement is absent from every row: the reasons rows give, or that none was attempted."""
    unavailable = frame[frame[status_column].notna() & (frame[status_column] != "ok")]
    if unavailable.empty:
        return f"No case in this run carries {what}."
    return f"No case in this run carries {what}: {reason_summary(unavailable, reason_column) or 'no reason given'}."
