"""The environment fingerprint and timing policy of the run, each field under a human name (`reports.names`),
with units; a tool's error output is never shown as a value."""

from __future__ import annotations

from reports.blocks import Definitions, Section
from reports.names import display_value, human_name
from reports.rows import flatten
from reports.run import Run

ID, TITLE = "environment", "Environment"


def _definitions(mapping: object, caption: str) -> Definitions | None:
    if not isinstance(mapping, dict) or not mapping:
        return None
    return Definitions([(human_name(key), display_value(key, value)) for key, value in flatten(mapping).items()],
                       caption=caption)


def section(run: Run) -> Section:
    blocks = [_definitions(run.env, "Environment fingerprint"),
              _definitions(run.results.get("policy"), "Timing policy"),
              _definitions(run.results.get("schedule"), "Schedule")]
    blocks = [block for block in blocks if block is not None]
    if not blocks:
        return Section.empty(ID, TITLE, "The results carry no environment fingerprint and no timing policy.")
    return Section(ID, TITLE, blocks)
