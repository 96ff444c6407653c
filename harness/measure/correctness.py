"""Check one prepared method against the exact reference, under its own mask, before it is timed.

Each check draws fresh random inputs, so an output left over from an earlier call cannot pass. Before the
call the allocator is handed a NaN-filled block of the output's size, which the method's output most
likely reuses: rows the method never writes stay NaN, and NaN never passes. Small problems are checked on
every query row; large ones on a fixed-size sample that always holds the first and last rows and the
shared rows (text, and HilbertA's centre) when they are few enough.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from baselines.base import PreparedAttention
from kernels.reference import reference_attention, relative_error

DEFAULT_TOLERANCES = MappingProxyType({"bfloat16": 1e-2, "float16": 5e-3, "float32": 1e-4})


@dataclass(frozen=True)
class CorrectnessPolicy:
    """How a check is made: relative-error tolerance per dtype, and which query rows are compared."""

    tolerances: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TOLERANCES)
    rows: int = 512  # query rows checked when L is larger than all_rows_max_len
    all_rows_max_len: int = 4096  # check every row up to this sequence length

    def tolerance(self, dtype: str) -> float:
        return self.tolerances[dtype]

    def to_dict(self) -> dict:
        return {"tolerances": dict(self.tolerances), "rows": self.rows, "all_rows_max_len": self.all_rows_max_len}


def rows_to_check(prepared: PreparedAttention, policy: CorrectnessPolicy, generator: torch.Generator) -> torch.Tensor:
    """Sorted int64 query rows: all of them up to ``policy.all_rows_max_len``, else ``policy.rows`` of them.
    A method that computes only some rows (the kernel's anatomy) names them: ``extra["row_range"]``."""
    start, stop = prepared.extra.get("row_range", (0, prepared.problem.seq_len))
    length = stop - start
    if length <= policy.all_rows_max_len or length <= policy.rows:
        return torch.arange(start, stop)
    shared = int(prepared.extra.get("shared_tokens", prepared.problem.text_tokens))
    always = {start, stop - 1}
    if shared <= policy.rows // 2:  # cheap enough: every shared row, random rows for the rest
        always.update(range(start, min(shared, stop)))
    fixed = torch.tensor(sorted(always), dtype=torch.int64)
    draw = start + torch.randperm(length, generator=generator)[: policy.rows + fixed.numel()]
    sample = draw[~torch.isin(draw, fixed)][: policy.rows - fixed.numel()]
    return torch.cat([fixed, sample]).unique(sorted=True)


def _poison_allocator(prepared: PreparedAttention, device: torch.device) -> None:
    """Leave a NaN-filled block of the output's size in the allocator's free list."""
    poison = torch.full(prepared.problem.shape(), math.nan, dtype=prepared.problem.torch_dtype, device=device)
    del poison


def check(prepared: PreparedAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          policy: CorrectnessPolicy | None = None, generator: torch.Generator | None = None) -> dict:
    """The ``correctness`` dict of a results row for these inputs: rel_err, max_abs_err, tol, passed,
    rows_checked, reference. ``generator`` draws the sampled rows of a large problem."""
    policy = policy or CorrectnessPolicy()
    problem = prepared.problem
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    rows = rows_to_check(prepared, policy, generator)
    _poison_allocator(prepared, q.device)
    with torch.no_grad():
        out = prepared.run(q, k, v)
        if tuple(out.shape) != problem.shape():
            raise ValueError(f"{prepared.method} returned shape {tuple(out.shape)}, expected {problem.shape()}")
        got = out[:, :, rows.to(out.device)]
        del out
        ref = reference_attention(q, k, v, mask=prepared.mask_rows, rows=rows)
    rel_err = relative_error(got, ref)
    diff = (got.to(ref.dtype) - ref).abs()
    max_abs = float(diff.max()) if bool(torch.isfinite(diff).all()) else math.inf
    tol = policy.tolerance(problem.dtype)
    kind = "mask" if prepared.mask_rows is not None else "dense"
    return {"rel_err": rel_err, "max_abs_err": max_abs, "tol": tol,
            "passed": bool(math.isfinite(rel_err) and rel_err <= tol), "rows_checked": int(rows.numel()),
            "reference": f"{str(ref.dtype).removeprefix('torch.')}-exact-{kind}"}


def check_correctness(prepared: PreparedAttention, policy: CorrectnessPolicy, device: torch.device | str,
                      seed: int | None = None) -> dict:
    """`check` on fresh random inputs (``seed`` fixes them and the sampled rows, for tests)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    input_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    q, k, v = prepared.problem.random_qkv(torch.device(device), seed=input_seed)
    return check(prepared, q, k, v, policy, generator)
