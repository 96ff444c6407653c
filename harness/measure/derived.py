"""Numbers derived from measured rows: densities, FLOPs, TFLOP/s, speedups and fraction of ideal.

Speedups are quoted against every dense reference method (``dense_reference``) of the same problem timed
in the same run; the *ideal* time of a sparse method is the fastest dense time times its token density
(dense work at equal efficiency, scaled by the work it must do). Only correct, timed rows take part: an
incorrect row gets no TFLOP/s and no speedup, and an incorrect dense row is nobody's reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from baselines.base import PreparedAttention

# Problem fields that make two rows comparable: everything but the layer (dense methods ignore it).
PROBLEM_KEY_FIELDS = ("height", "width", "text_tokens", "batch", "heads", "head_dim", "dtype")


def static_metrics(prepared: PreparedAttention) -> dict:
    """Row fields known before timing: ``density``, ``flops`` and ``bytes``."""
    problem = prepared.problem
    return {
        "density": {"token": prepared.token_density, "block": prepared.block_density},
        "flops": {"dense": problem.dense_flops, "effective": prepared.effective_flops,
                  "computed": prepared.computed_flops},
        "bytes": {"compulsory": problem.compulsory_bytes},
    }


def problem_key(row: dict) -> tuple:
    problem = row.get("problem") or {}
    return tuple(problem.get(name) for name in PROBLEM_KEY_FIELDS)


def is_timed_ok(row: dict) -> bool:
    """Correct (status ok) and timed: the rows that may be quoted."""
    return row.get("status") == "ok" and bool(row.get("median_ms"))


def tflops(row: dict) -> dict | None:
    """Dense-equivalent (dense FLOPs / time) and effective (allowed-pair FLOPs / time) TFLOP/s."""
    flops, median_ms = row.get("flops"), row.get("median_ms")
    if not (is_timed_ok(row) and flops):
        return None
    seconds = median_ms * 1e-3
    return {"dense_equivalent": flops["dense"] / seconds / 1e12, "effective": flops["effective"] / seconds / 1e12}


def dense_references(rows: Iterable[dict]) -> dict[str, dict]:
    """Method name -> its fastest correct timed row, over the dense reference rows given."""
    best: dict[str, dict] = {}
    for row in rows:
        if not (row.get("dense_reference") and is_timed_ok(row)):
            continue
        if row["method"] not in best or row["median_ms"] < best[row["method"]]["median_ms"]:
            best[row["method"]] = row
    return best


def speedups(row: dict, references: dict[str, dict]) -> dict | None:
    """The ``derived`` dict of one row against the dense references of its problem (None if not quotable)."""
    if not is_timed_ok(row) or not references:
        return None
    fastest = min(references.values(), key=lambda ref: ref["median_ms"])
    token_density = (row.get("density") or {}).get("token")
    ideal_ms = fastest["median_ms"] * token_density if token_density is not None else None
    return {
        "speedup": {name: ref["median_ms"] / row["median_ms"] for name, ref in sorted(references.items())},
        "fastest_dense": fastest["method"],
        "fastest_dense_ms": fastest["median_ms"],
        "ideal_ms": ideal_ms,
        "fraction_of_ideal": ideal_ms / row["median_ms"] if ideal_ms is not None else None,
    }


def add_derived(rows: list[dict]) -> list[dict]:
    """Fill ``tflops`` and ``derived`` of every kernel row in place (None where nothing can be claimed);
    returns the rows. Speedups are against dense rows of the same problem timed on the same card
    (``device_index``: a ``--gpus`` run may time a sub-group on a card without a dense method)."""
    by_problem: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("kind", "kernel") == "kernel":
            by_problem[(problem_key(row), row.get("device_index"))].append(row)
    for group in by_problem.values():
        references = dense_references(group)
        for row in group:
            row["tflops"] = tflops(row)
            row["derived"] = speedups(row, references)
    return rows
