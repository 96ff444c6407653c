"""K and V written straight into the order a method's layer asks for (`baselines.base.KeyOrder`), by the ops
that write them anyway in Flux's attention processor: RoPE's last cast (K), the text-image concatenation (V in
double blocks) and V's projection (single blocks, one GEMM per segment). No pass over K or V is added.

``segments`` are ranges [a, b) of the joint sequence ``[text | image]``, laid back to back; tensors are
``[B, L, ...]`` with the sequence on dim 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Segments = Sequence[tuple[int, int]]


def copy_in_order(parts: Sequence[tuple[torch.Tensor, int]], segments: Segments,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """``parts`` — (tensor, the sequence position of its first row) that together cover the sequence — copied
    once into a new tensor in ``segments`` order (cast to ``dtype`` on the way)."""
    first = parts[0][0]
    total = sum(b - a for a, b in segments)
    out = torch.empty(first.shape[0], total, *first.shape[2:], dtype=dtype or first.dtype, device=first.device)
    at = 0
    for a, b in segments:
        for part, start in parts:
            lo, hi = max(a, start), min(b, start + part.shape[1])
            if lo < hi:
                out[:, at + lo - a : at + hi - a].copy_(part[:, lo - start : hi - start])
        at += b - a
    return out


def rotary_in_order(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor] | None,
                    segments: Segments) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb(x, freqs, sequence_dim=1)`` (real, pairs interleaved: Flux's), whose last
    cast to x's dtype writes the result in ``segments`` order; x [B, L, H, D], freqs (cos, sin) [L, D]."""
    if freqs is None:
        return copy_in_order([(x, 0)], segments)
    cos, sin = (f[None, :, None, :].to(x.device) for f in freqs)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return copy_in_order([(x.float() * cos + x_rotated.float() * sin, 0)], segments, dtype=x.dtype)


def linear_in_order(linear: torch.nn.Module, x: torch.Tensor, segments: Segments) -> torch.Tensor:
    """``linear(x)`` for x [B, L, C] with its output rows in ``segments`` order: one GEMM per segment into its
    place for a plain ``nn.Linear``; any other module (a LoRA wrapper, a quantized layer), or one that autograd
    tracks (GEMMs with ``out=`` cannot be), runs whole and its output is copied."""
    if type(linear) is not torch.nn.Linear or (torch.is_grad_enabled() and linear.weight.requires_grad):
        return copy_in_order([(linear(x), 0)], segments)
    weight, bias = linear.weight, linear.bias
    total = sum(b - a for a, b in segments)
    out = torch.empty(x.shape[0], total, weight.shape[0], dtype=x.dtype, device=x.device)
    for batch in range(x.shape[0]):
        at = 0
        for a, b in segments:
            rows = out[batch, at : at + b - a]  # contiguous: whole rows of one batch entry
            if bias is None:
                torch.mm(x[batch, a:b], weight.t(), out=rows)
            else:
                torch.addmm(bias, x[batch, a:b], weight.t(), out=rows)
            at += b - a
    return out
