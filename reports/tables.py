"""HTML-ready tables built from pandas frames: every cell is a plain string that the template escapes.

Values from results (method names, reasons) are never marked safe here; formatting happens per column
with the functions of `reports.formatting`, and a row may carry a CSS class (status, gate outcome).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from reports.formatting import fmt_text

Formatter = Callable[[object], str]


@dataclass(frozen=True)
class Column:
    """One displayed column: ``key`` in the frame, its heading, its formatter, right-aligned if numeric."""

    key: str
    heading: str
    render: Formatter = fmt_text
    numeric: bool = False


@dataclass(frozen=True)
class Table:
    headings: list[str]
    numeric: list[bool]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)
    caption: str = ""
    kind: str = "table"

    def __len__(self) -> int:
        return len(self.rows)


def css_token(value: object) -> str:
    """A value turned into a safe CSS class suffix (letters, digits and dashes only)."""
    token = "".join(ch if ch.isalnum() else "-" for ch in str(value).lower()).strip("-")
    return token or "none"


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
    )


def status_class(record: Mapping) -> str:
    return f"status-{css_token(record.get('status'))}"
