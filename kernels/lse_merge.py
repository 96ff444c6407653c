"""Merge two partial attentions of the same query rows by their log-sum-exp (one Triton launch).

HilbertA's local query rows attend two disjoint key sets: the S shared keys and the keys of their own tile.
When each set is attended by a separate call that returns its normalised output ``o`` and natural-log
``lse`` per (row, head), the exact result is ``(e^lse_a o_a + e^lse_b o_b) / (e^lse_a + e^lse_b)``, computed
here in fp32 with the larger lse subtracted first. ``out`` may be ``o_a`` itself (each program reads its rows
before it writes them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _merge_kernel(OUT, OA, LSE_A, OB, LSE_B, n_rows, s_out_r, s_out_h, s_oa_r, s_oa_h, s_la_h, s_ob_r, s_ob_h,
                  s_lb_h, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
    head = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, HEAD_DIM)
    valid = rows < n_rows
    lse_a = tl.load(LSE_A + head * s_la_h + rows, mask=valid, other=0.0)
    lse_b = tl.load(LSE_B + head * s_lb_h + rows, mask=valid, other=0.0)
    o_a = tl.load(OA + rows[:, None] * s_oa_r + head * s_oa_h + cols[None, :], mask=valid[:, None], other=0.0)
    o_b = tl.load(OB + rows[:, None] * s_ob_r + head * s_ob_h + cols[None, :], mask=valid[:, None], other=0.0)
    top = tl.maximum(lse_a, lse_b)
    w_a = tl.exp(lse_a - top)
    w_b = tl.exp(lse_b - top)
    merged = (w_a[:, None] * o_a.to(tl.float32) + w_b[:, None] * o_b.to(tl.float32)) / (w_a + w_b)[:, None]
    tl.store(OUT + rows[:, None] * s_out_r + head * s_out_h + cols[None, :], merged.to(OUT.dtype.element_ty),
             mask=valid[:, None])


def merge_partials(out: torch.Tensor, part_a: tuple[torch.Tensor, torch.Tensor],
                   part_b: tuple[torch.Tensor, torch.Tensor], block_rows: int = 32) -> torch.Tensor:
    """Write into ``out`` [n, H, D] the merge of ``part_a`` and ``part_b``, each (o [n, H, D], lse [H, n]) of
    the same rows over disjoint key sets. The last dimension of every tensor must be contiguous."""
    (o_a, lse_a), (o_b, lse_b) = part_a, part_b
    n, heads, head_dim = out.shape
    for t in (o_a, o_b):
        if tuple(t.shape) != (n, heads, head_dim):
            raise ValueError(f"partial output of shape {tuple(t.shape)}, expected {(n, heads, head_dim)}")
    for t in (lse_a, lse_b):
        if tuple(t.shape) != (heads, n):
            raise ValueError(f"log-sum-exp of shape {tuple(t.shape)}, expected {(heads, n)}")
    if any(t.stride(-1) != 1 for t in (out, o_a, o_b, lse_a, lse_b)):
        raise ValueError("merge_partials needs a contiguous last dimension in every tensor")
    grid = (triton.cdiv(n, block_rows), heads)
    _merge_kernel[grid](out, o_a, lse_a, o_b, lse_b, n, out.stride(0), out.stride(1), o_a.stride(0), o_a.stride(1),
                        lse_a.stride(0), o_b.stride(0), o_b.stride(1), lse_b.stride(0), HEAD_DIM=head_dim,
                        BLOCK_R=block_rows)
    return out
