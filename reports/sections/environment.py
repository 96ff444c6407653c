"""The environment fingerprint and timing policy of the run, shown as recorded (nested keys dotted)."""

from __future__ import annotations

import json

from reports.blocks import Definitions, Section
from reports.formatting import MISSING
from reports.rows import flatten
from reports.run import Run

ID, TITLE = "environment", "Environment"


def _describe(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _definitions(mapping: object, caption: str) -> Definitions | None:
    if not isinstance(mapping, dict) or not mapping:
        return None
    return Definitions([(key, _describe(value)) for key, value in flatten(mapping).items()], caption=caption)


def section(run: Run) -> Section:
    blocks = [_definitions(run.env, "Environment fingerprint"),
              _definitions(run.results.get("policy"), "Timing policy")]
    blocks = [block for block in blocks if block is not None]
    if not blocks:
        return Section.empty(ID, TITLE, "The results carry no environment fingerprint and no timing policy.")
    return Section(ID, TITLE, blocks)
