"""The gate: compare a candidate run with a reference (verdict.json, summary.md, exit code), and its A/B
worker mode that times two revisions under the same schedule."""
