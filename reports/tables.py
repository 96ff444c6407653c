"""HTML-ready tables built from pandas frames: every cell is a plain string that the template escapes.

Values from results (method names, reasons) are never marked safe here; formatting happens per column
with the functions of `reports.formatting`, and a row may carry a CSS class (status, gate outcome).
Numeric cells also carry their raw value as a sort key (the page's inline script sorts on it), and a
column may carry a tooltip saying how a derived value was computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from reports.formatting import fmt_text, number_or_none

Formatter = Callable[[object], str]


@dataclass(frozen=True)
class Column:
    """One displayed column: ``key`` in the frame, its heading, its formatter, right-aligned and sorted by
    value if numeric, and ``tip``: how a derived value is computed (the heading's tooltip)."""

    key: str
    heading: str
    render: Formatter = fmt_text
    numeric: bool = False
    tip: str = ""


@dataclass(frozen=True)
class Table:
    headings: list[str]
    numeric: list[bool]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)
    caption: str = ""
    tips: list[str] = field(default_factory=list)
    sort_keys: list[list[str]] = field(default_factory=list)  # per cell: the raw number, "" where none
    kind: str = "table"

    def __len__(self) -> int:
        return len(self.rows)


def css_token(value: object) -> str:
    """A value turned into a safe CSS class suffix (letters, digits and dashes only)."""
    token = "".join(ch if ch.isalnum() else "-" for ch in str(value).lower()).strip("-")
    return token or "none"


def sort_key(value: object) -> str:
    """A numeric cell's raw value for sorting ("" when missing: sorted last); 9 significant digits order any
    two values a table shows apart, at half the bytes of a full repr."""
    number = number_or_none(value)
    if number is None:
        return ""
    return f"{number:.9g}" if math.isfinite(number) else ("Infinity" if number > 0 else "-Infinity")


def build_table(frame: pd.DataFrame, columns: Sequence[Column], caption: str = "",
                row_class: Callable[[Mapping], str] | None = None) -> Table:
    """Format ``frame``'s ``columns`` cell by cell; ``row_class(row)`` names a CSS class per row."""
    missing = [column.key for column in columns if column.key not in frame.columns]
    if missing:
        raise ValueError(f"table columns {missing} are not in the frame (has {list(frame.columns)})")
    records = frame.to_dict("records")
    return Table(
        headings=[column.heading for column in columns],
        numeric=[column.numeric for column in columns],
        rows=[[column.render(record[column.key]) for column in columns] for record in records],
        row_classes=[css_token(row_class(record)) if row_class else "" for record in records],
        caption=caption,
        tips=[column.tip for column in columns],
        sort_keys=[[sort_key(record[column.key]) if column.numeric else "" for column in columns]
                   for record in records],
    )


def status_class(record: Mapping) -> str:
    return f"status-{css_token(record.get('status'))}"
