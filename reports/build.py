"""Render a results directory into one self-contained HTML page (``report.html``).

The page loads nothing from anywhere: plotly.js is inlined once in the head, gzipped and base64-encoded
(`plotly_packed`: 1.9 MB instead of 4.8, so that a full run's page stays well under its 5 MB) and unpacked by
the page's own script with the browser's DecompressionStream before the figures are drawn; CSS is inlined,
figures are embedded with ``include_plotlyjs=False``. The jinja2 environment autoescapes everything and fails
on any undefined variable; the only trusted fragments are plotly's divs, marked with `markupsafe.Markup` in
Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import base64
import gzip

import plotly
import plotly.offline
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from reports.figures import OUTCOME_COLOURS
from reports.run import Run
from reports.sections import build_sections
from reports.sections.compare import check_verdict
from reports.tables import css_token

REPORT_FILE = "report.html"


@lru_cache(maxsize=1)
def plotly_packed() -> str:
    """The plotly.js bundle shipped with plotly.py, gzipped (no timestamp: the same bytes every build) and
    base64-encoded: plain ASCII that autoescaping leaves as it is."""
    bundle = plotly.offline.get_plotlyjs().encode()
    return base64.b64encode(gzip.compress(bundle, compresslevel=9, mtime=0)).decode("ascii")


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _ci_method(run: Run) -> str:
    methods = sorted({str(method) for method in run.frame["ci_method"].dropna()})
    return ", ".join(methods) or "method not recorded: bootstrap over samples in schema 1"


def render_report(run: Run, reference: Run | None = None, verdict: Mapping | None = None) -> str:
    """The report page of ``run`` as a string (compared against ``reference`` when given, with the gate's
    ``verdict`` when given)."""
    template = environment().get_template("report.html")
    return template.render(
        title=f"HilbertA benchmark: {run.name}",
        run=run,
        sections=build_sections(run, reference, verdict),
        ci_method=_ci_method(run),
        plotly_packed=plotly_packed(),
        plotly_version=plotly.__version__,
        outcome_colours={css_token(name): colour for name, colour in OUTCOME_COLOURS.items()},
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def build_report(results_dir: str | Path, compare_dir: str | Path | None = None,
                 out_path: str | Path | None = None, verdict: Mapping | None = None) -> Path:
    """Write the report of ``results_dir`` (to ``results_dir/report.html`` unless ``out_path``) and return its path.

    ``compare_dir`` is a reference run: the report then compares this run against it. ``verdict`` is the
    gate's verdict.json dict for that pair (`harness.apps.gate.compare.compare`), rendered as it is; a
    malformed one raises ValueError naming the field.
    """
    if verdict is not None:
        check_verdict(verdict)
    run = Run.load(results_dir)
    reference = Run.load(compare_dir) if compare_dir is not None else None
    out = Path(out_path) if out_path is not None else run.directory / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_report(run, reference, verdict), encoding="utf-8")
    tmp.replace(out)
    return out
