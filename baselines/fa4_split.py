"""HilbertA as dense FlashAttention-4 pieces (no mask anywhere) and one Triton merge: ``hilberta_fa4split``.

In the kernel's sequence order ``[shared S | local N']`` HilbertA's mask is three kinds of dense rectangles:
1. the shared query rows against every key;
2. the local rows against the S shared keys;
3. each local row against its own tile: a contiguous run of the local region, but for the one tile that wraps
   around its end, which is a tail run R1 and a head run R0.
Each kind is one FA4 call over variable-length sequences (``cu_seqlens_q`` for the query runs; for the keys a
start per sequence in ``cu_seqlens_k`` and a length in ``seqused_k``, so key runs may overlap and come in any
order: FA4 reads each sequence's keys from its own start). The wrapping tile needs no copy: R0 lies right
after the shared keys in memory, so R0's and R1's rows take [0, S + |R0|) in call 2 and R1's keys in call 3.
Calls 2 and 3 return their log-sum-exp and `kernels.lse_merge.merge_partials` combines them in place.

``shared_rows``: "stream" runs call 1 as one dense call on a second CUDA stream, beside calls 2 and 3 (its few
long programs, 24 heads x S/128, would leave most SMs idle in their last wave); "fused" makes the shared rows
the first sequence of call 2 (two FA4 calls in all). Exact for every layout with shared tokens: tile bounds and
offsets need not be multiples of FA4's blocks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from baselines.base import PreparedAttention
from baselines.fa4 import _fa4_for, fa4_probe
from baselines.hilberta_methods import _labeler, _layout_facts, _namer, _params, layout_for
from baselines.problem import Problem
from baselines.registry import MethodUnavailable, Param, one_of, register_family

SHARED_ROWS = ("stream", "fused")


@dataclass(frozen=True)
class Sequences:
    """One variable-length FA4 call: query runs that partition its rows, each with its own key run."""

    cu_q: torch.Tensor  # int32 [n + 1]: query run bounds
    start_k: torch.Tensor  # int32 [n + 1]: key run starts (the last entry only pads the shape FA4 expects)
    used_k: torch.Tensor  # int32 [n]: key run lengths
    max_q: int
    max_k: int

    @classmethod
    def of(cls, runs: list[tuple[int, int, int, int]], device: torch.device) -> Sequences:
        """``runs``: (query start, query end, key start, key end), query runs in order and back to back."""
        runs = [r for r in runs if r[1] > r[0]]
        as_int32 = lambda values: torch.tensor(values, dtype=torch.int32, device=device)  # noqa: E731
        return cls(cu_q=as_int32([r[0] for r in runs] + [runs[-1][1]]),
                   start_k=as_int32([r[2] for r in runs] + [runs[-1][3]]),
                   used_k=as_int32([r[3] - r[2] for r in runs]),
                   max_q=max(r[1] - r[0] for r in runs), max_k=max(r[3] - r[2] for r in runs))


@dataclass(frozen=True)
class SplitPlan:
    """The calls of one layer's mask (device tensors made once, at prepare time)."""

    shared: int  # S: rows and keys [0, S)
    fused: bool  # the shared rows are the first sequence of ``keys`` (rows of the whole sequence), else
    #              ``keys`` runs on the local rows and the shared rows are a dense call of their own
    keys: Sequences  # rows against the shared keys (and the wrapping tile's head run, which follows them)
    tiles: Sequences  # local rows (from 0) against their own tile's local keys


def split_plan(layout, layer: int, device: torch.device, fused: bool = False) -> SplitPlan:
    s, n, length = layout.shared_tokens, layout.local_tokens, layout.seq_len
    if s == 0:
        raise MethodUnavailable("HilbertA as dense FA4 pieces needs shared tokens (text or a centre)")
    bounds = layout.tile_bounds()
    head = layout.offset(layer) if layout.num_tiles > 1 else 0  # R0: one tile is every local key at any offset
    tail = bounds[-2] + head  # R1 = [tail, n) when the tiles are shifted
    tiles = [(bounds[t] + head, bounds[t + 1] + head) for t in range(layout.num_tiles - (1 if head else 0))]
    if head:
        wrap = (tail, n)
        tile_runs = [(0, head, *wrap), *[(a, b, a, b) for a, b in tiles], (*wrap, *wrap)]
        key_runs = [(0, head, 0, s + head), (head, tail, 0, s), (tail, n, 0, s + head)]
    else:
        tile_runs = [(a, b, a, b) for a, b in tiles]
        key_runs = [(0, n, 0, s)]
    if fused:  # rows of the whole sequence: the shared rows first, then the local runs shifted by S
        key_runs = [(0, s, 0, length)] + [(qa + s, qb + s, ka, kb) for qa, qb, ka, kb in key_runs]
    return SplitPlan(shared=s, fused=fused, keys=Sequences.of(key_runs, device),
                     tiles=Sequences.of(tile_runs, device))


def _varlen(fwd, q, k, v, seqs: Sequences, out: torch.Tensor | None = None):
    """(out, lse [H, rows]) of one variable-length call; q [rows, H, D], k and v [keys, H, D]."""
    return fwd(q, k, v, cu_seqlens_q=seqs.cu_q, cu_seqlens_k=seqs.start_k, seqused_k=seqs.used_k,
               max_seqlen_q=seqs.max_q, max_seqlen_k=seqs.max_k, out=out, return_lse=True)[:2]


def _on(stream: torch.cuda.Stream | None):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def split_attention(fwd, plan: SplitPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    side: torch.cuda.Stream | None = None) -> torch.Tensor:
    """q, k, v [B, H, L, D] (HilbertA's sequence order) -> out [B, H, L, D]; ``fwd`` is FA4's
    ``_flash_attn_fwd``; ``side``: the stream for the shared rows' own call (None: the current stream)."""
    from kernels.lse_merge import merge_partials

    s = plan.shared
    main = torch.cuda.current_stream(q.device) if side is not None else None
    if side is not None and not plan.fused:
        side.wait_stream(main)
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # FA4's [B, L, H, D], views
    out = torch.empty_like(qs)
    for b in range(q.shape[0]):
        if plan.fused:
            lse_keys = _varlen(fwd, qs[b], ks[b], vs[b], plan.keys, out=out[b])[1][:, s:]
        else:
            with _on(side):
                fwd(qs[b : b + 1, :s], ks[b : b + 1], vs[b : b + 1], out=out[b : b + 1, :s])
            lse_keys = _varlen(fwd, qs[b, s:], ks[b], vs[b], plan.keys, out=out[b, s:])[1]
        tile_part = _varlen(fwd, qs[b, s:], ks[b, s:], vs[b, s:], plan.tiles)
        merge_partials(out[b, s:], (out[b, s:], lse_keys), tile_part)
    if side is not None and not plan.fused:
        main.wait_stream(side)
    return out.transpose(1, 2)


@register_family("hilberta_fa4split", category="hilberta",
                 params={**_params(("hilbert", "closed")),
                         "shared_rows": Param("stream", "stream (their own dense call on a second CUDA stream) | "
                                                        "fused (the first sequence of the shared-keys call)",
                                              one_of(*SHARED_ROWS))},
                 method_name=lambda p: _namer("hilberta_fa4split")(p) + ("_fused" if p["shared_rows"] == "fused"
                                                                         else ""),
                 label=lambda p: _labeler("HilbertA as dense FA4 pieces")(p) + (" (fused)" if p["shared_rows"] == "fused"
                                                                                else ""),
                 probe=fa4_probe)
def build_hilberta_fa4split(problem: Problem, device: torch.device, *, tiles: int, centre: float, curve: str,
                            cycle: int, shared_rows: str) -> PreparedAttention:
    """HilbertA's mask (this layer's phase) as dense FA4 calls over variable-length runs and a merge."""
    _fa4_for(problem, device)
    from flash_attn.cute.interface import _flash_attn_fwd

    layout, layout_ms = layout_for(problem, tiles, centre, curve, cycle)
    layer = problem.layer
    plan = split_plan(layout, layer, device, fused=shared_rows == "fused")
    side = torch.cuda.Stream(device) if shared_rows == "stream" else None
    allowed = layout.allowed_pairs(layer)
    return PreparedAttention(
        method="hilberta_fa4split", problem=problem, backend="fa4-cute-varlen+triton-merge",
        run=lambda q, k, v: split_attention(_flash_attn_fwd, plan, q, k, v, side),
        image_order=layout.permutation(), mask_rows=lambda rows: layout.mask_rows(rows, layer),
        allowed_pairs=allowed, computed_pairs=allowed,  # no masked block; FA4 pads each run's last blocks
        setup_ms={"layout": layout_ms},
        extra={**_layout_facts(layout, layer), "shared_rows": shared_rows,
               "computed_pairs_basis": "token pairs (the padding of each run's last FA4 blocks is not counted)"})
