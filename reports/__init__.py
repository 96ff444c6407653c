"""HTML reports of benchmark runs: ``build_report(results_dir)`` writes ``results_dir/report.html``.

A report is one self-contained page (no network). Its first screen answers four questions (how much faster
than each baseline family, is everything correct, on what exactly, what failed and why); below come the
anomalies flagged from the data, then latency, traffic and roofline, power and energy, end-to-end,
correctness, locality, tuning and environment sections, and, given a reference run, a comparison shown with
the gate's own verdict (its verdict.json dict). Reads results only (see docs/architecture.md).
"""

from reports.build import build_report, render_report

__all__ = ["build_report", "render_report"]
