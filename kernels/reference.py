"""The exact reference every attention method is checked against.

Softmax attention under an explicit boolean mask, computed in float64 on the CPU and float32 on a GPU
(TF32 off), a chunk of query rows at a time so that even L = 66k fits: only the rows asked for are
computed, which is how large problems are checked on a random sample of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MaskLike = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def _mask_chunk(mask: MaskLike, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    chunk = mask(rows.cpu()) if callable(mask) else mask[rows.to(mask.device)]
    return chunk.to(device=device, dtype=torch.bool)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskLike = None,
                        rows: torch.Tensor | None = None, scale: float | None = None,
                        chunk_rows: int = 512) -> torch.Tensor:
    """Exact attention output for the query ``rows`` (all by default): [B, H, len(rows), D].

    ``mask`` is a bool [L, L] tensor, or a function mapping row indices to bool [len(rows), L] (as
    `HilbertLayout.mask_rows` and `PreparedAttention.mask_rows` do), or None for dense attention.
    A row whose mask allows no key is a bug in the mask and raises.
    """
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q [B,H,Lq,D] and k, v [B,H,L,D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    high = torch.float64 if q.device.type == "cpu" else torch.float32
    length = k.shape[2]
    rows = torch.arange(q.shape[2], device=q.device) if rows is None else rows.to(q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kh, vh = k.to(high), v.to(high)
    out = torch.empty(q.shape[0], q.shape[1], rows.numel(), q.shape[-1], dtype=high, device=q.device)
    for start in range(0, rows.numel(), chunk_rows):
        r = rows[start:start + chunk_rows]
        scores = torch.matmul(q[:, :, r].to(high), kh.transpose(-1, -2)) * scale
        allowed = _mask_chunk(mask, r, q.device)
        if allowed is not None:
            if allowed.shape != (r.numel(), length):
                raise ValueError(f"mask rows have shape {tuple(allowed.shape)}, expected ({r.numel()}, {length})")
            if not bool(allowed.any(dim=1).all()):
                raise ValueError("the mask leaves a query row with no key to attend to")
            scores.masked_fill_(~allowed, float("-inf"))
        out[:, :, start:start + r.numel()] = torch.matmul(torch.softmax(scores, dim=-1), vh)
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; anything non-finite in ``out`` gives inf (NaN never passes)."""
    out64, ref64 = out.to(torch.float64), ref.to(device=out.device, dtype=torch.float64)
    if not bool(torch.isfinite(out64).all()):
        return math.inf
    return float(torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64).clamp_min(1e-30))
