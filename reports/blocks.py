"""The pieces a report section is made of: paragraphs, definition lists, tables and figures.

A `Section` with no blocks carries a one-line ``note`` saying why it is empty (the run has no such data).
Templates dispatch on each block's ``kind``; every string in a block is escaped when rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reports.figures import FigureBlock
from reports.tables import Table


@dataclass(frozen=True)
class Paragraph:
    text: str
    css: str = ""
    kind: str = "paragraph"


@dataclass(frozen=True)
class Definitions:
    """A definition list: (term, description) pairs, e.g. the environment fingerprint."""

    items: list[tuple[str, str]]
    caption: str = ""
    kind: str = "definitions"


@dataclass(frozen=True)
class Answer:
    """One of the first screen's answers: a titled card with its own element id (``answer-speedup`` ...)."""

    anchor: str
    heading: str
    blocks: list  # of Paragraph | Definitions | Table
    css: str = ""  # "ok" | "warning" | "bad": the card's border colour
    kind: str = "answer"


@dataclass(frozen=True)
class Stack:
    """Blocks stacked in one column of a multi-column layout (the first screen's two columns)."""

    blocks: list
    kind: str = "stack"


Block = Paragraph | Definitions | Table | FigureBlock | Answer | Stack


@dataclass
class Section:
    id: str  # HTML anchor
    title: str
    blocks: list[Block] = field(default_factory=list)
    note: str = ""  # why the section is empty; set only when it has no blocks

    @classmethod
    def empty(cls, anchor: str, title: str, note: str) -> Section:
        return cls(anchor, title, note=note)

    def add(self, block: Block) -> None:
        self.blocks.append(block)

    def add_figure(self, figure, caption: str = "") -> None:
        """Adds a plotly figure with a div id unique in the page (derived from the section id)."""
        figures = sum(isinstance(block, FigureBlock) for block in self.blocks)
        self.add(FigureBlock(figure, f"{self.id}-fig{figures}", caption))
