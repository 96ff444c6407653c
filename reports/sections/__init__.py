"""The report's sections in page order; each builder returns a `Section`, empty with a note when the run
has no data for it."""

from __future__ import annotations

from reports.blocks import Section
from reports.run import Run
from reports.sections import (
    checks,
    compare,
    e2e,
    environment,
    headline,
    latency,
    power,
    problems,
    summary,
    traffic,
    tuning,
)

# Page order after the summary, the headline and the comparison.
RUN_SECTIONS = (
    latency.section,
    traffic.section,
    power.section,
    e2e.section,
    checks.correctness_section,
    checks.locality_section,
    tuning.section,
    problems.section,
    environment.section,
)


def build_sections(run: Run, reference: Run | None = None) -> list[Section]:
    """All sections of the report of ``run``, compared against ``reference`` when one is given."""
    return [summary.section(run), headline.section(run), compare.section(run, reference),
            *(build(run) for build in RUN_SECTIONS)]
