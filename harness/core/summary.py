"""The console summary of a finished run: the results table, A/A warnings, whether it stopped early, and the
run's exit status."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.core.results import RESULTS_NAME
from harness.core.wall import wall_line


def console_table(results: dict) -> str:
    """The final table: resolution, method, status, median, CI, speedup vs the fastest dense, density."""
    header = ("resolution", "method", "status", "median ms", "95% CI ms", "vs fastest dense", "density")
    lines = [header]
    for row in results["cases"]:
        problem = row.get("problem") or {}
        derived_row = row.get("derived") or {}
        fastest = derived_row.get("fastest_dense")
        speedup = (derived_row.get("speedup") or {}).get(fastest)
        ci = row.get("ci95_ms")
        layer = f" L{problem['layer']}" if problem.get("layer") else ""
        layer += f" [{row['kind']}]" if row.get("kind", "kernel") != "kernel" else ""
        density = (row.get("density") or {}).get("token")
        lines.append((
            str(problem.get("resolution", "")), f"{row.get('method') or row['case']}{layer}", row["status"],
            f"{row['median_ms']:.4g}" if row.get("median_ms") else "",
            f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and None not in ci else "",
            f"{speedup:.2f}x ({fastest})" if speedup else "",
            f"{density:.1%}" if density is not None else "",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    reasons = [f"  {row['case']}: {row['status']}: {row['reason']}" for row in results["cases"]
               if row.get("reason")]
    return "\n".join(out + (["", "reasons:", *reasons] if reasons else []))


def exit_status(results: dict) -> int:
    """1 when a case was incorrect or failed, else 0 (unavailable and skipped cases are not failures)."""
    return int(any(row.get("status") in ("incorrect", "failed") for row in results["cases"]))


def print_summary(results: dict, out_dir: Path, stream=None) -> None:
    stream = stream or sys.stdout
    print(console_table(results), file=stream)
    for pair in results.get("aa_pairs") or ():
        if not pair.get("agree"):
            print(f"\nWARNING: A/A pair {pair['b']} / {pair['a']} disagrees: ratio {pair['ratio']:.4f}, 95% CI "
                  f"[{pair['ci95'][0]:.4f}, {pair['ci95'][1]:.4f}] is not within {pair['limit_pct']} %; this run "
                  "cannot resolve differences that small (the gate refuses it)", file=stream)
    if results.get("complete") is False:
        print(f"\nINCOMPLETE: the run stopped before its end (complete: false); {len(results['cases'])} cases "
              "recorded, the rest never ran", file=stream)
    if results.get("wall"):
        print("\n" + wall_line(results["wall"]), file=stream)
    for card in ((results.get("env") or {}).get("spread") or {}).get("cards", ()):
        if card.get("wall"):
            print(f"  gpu{card['index']}: {wall_line(card['wall'])}", file=stream)
    print(f"\nresults: {out_dir / RESULTS_NAME}", file=stream)
