"""The report's sections in page order; each builder returns a `Section`, empty with a note when the run
has no data for it. The first (`answers`) is the first screen; the comparison needs a reference run."""

from __future__ import annotations

from collections.abc import Mapping

from reports.blocks import Section
from reports.run import Run
from reports.sections import (
    anomalies,
    answers,
    checks,
    compare,
    e2e,
    environment,
    headline,
    latency,
    power,
    traffic,
    tuning,
)

# Page order after the first screen, the anomalies and the comparison.
RUN_SECTIONS = (
    headline.section,
    latency.section,
    traffic.section,
    power.section,
    e2e.section,
    checks.correctness_section,
    checks.locality_section,
    tuning.section,
    environment.section,
)


def build_sections(run: Run, reference: Run | None = None, verdict: Mapping | None = None) -> list[Section]:
    """All sections of the report of ``run``, compared against ``reference`` (judged by the gate's
    ``verdict`` when one is given)."""
    return [answers.section(run), anomalies.section(run), compare.section(run, reference, verdict),
            *(build(run) for build in RUN_SECTIONS)]
