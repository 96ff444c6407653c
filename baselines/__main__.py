"""``python -m baselines [--device DEVICE]``: every registered method, and whether it can run here (and why not)."""

from __future__ import annotations

import argparse

import torch

from baselines.registry import listing


def format_listing(rows: list[dict]) -> str:
    columns = ("name", "label", "family", "dense_reference", "available", "reason")
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns[:-1], widths)) + "  reason"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line[:-1], widths)) + "  " + line[-1] for line in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m baselines", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"attention methods on {args.device}:")
    print(format_listing(listing(args.device)))


if __name__ == "__main__":
    main()
