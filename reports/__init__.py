"""HTML reports of benchmark runs: ``build_report(results_dir)`` writes ``results_dir/report.html``.

A report is one self-contained page (no network) with a plain summary, HilbertA's headline speedups beside
the paper's claims, latency, traffic, power, end-to-end, correctness, locality and tuning sections, and,
given a reference run, a comparison coloured by the gate's outcome per case. Reads results only (see DESIGN.md).
"""

from reports.build import build_report, render_report

__all__ = ["build_report", "render_report"]
