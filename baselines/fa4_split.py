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
the first sequence of call 2 (two FA4 calls in all; one with paged keys). Exact for every layout with shared tokens: tile bounds and
offsets need not be multiples of FA4's blocks.

``shared_keys``: "merge" (the above) or "paged": one call gives each local run its whole key set, the shared
keys' pages then its tile's, through FA4's paged KV. The keys are viewed (no copy) as pages of P tokens, P a
size that divides S, the local length and every run bound (48 to 192 at 2048x2048 T=16); each run's page
table row lists its pages, so calls 2 and 3 become one, with no partials and no merge. FA4 loads pages by TMA
when they are exactly its key block: at head dim 128 the call asks for a key block of P where P is one of
``TMA_PAGES`` (`key_tile`); other sizes load by cp.async from its producer warps, which is slower on long
sequences than the merge it saves.

``key_order``: "tiles" (the default) also offers callers that write K and V themselves (the end-to-end Flux
processor) each shifted layer's keys in tile order, ``[shared | local from the offset | local before it]``
(`tile_order`): the tiles then start where layer 0's do, so every phase pages its keys as phase 0 does (by TMA at
2048x2048 T=16, where phases 1 and 3 otherwise merge: pages of 48). `run` itself takes K and V as given either
way; "given" offers nothing (the end-to-end control).

"auto" (the default of both) picks per layer what measured fastest on H200s (docs/kernel-notes.md, every phase
at 1024 to 4096): paged keys where the pages load by TMA or the sequence is short (at most ``SHORT_SEQ``
tokens: there the merge and a third call cost more than cp.async loads), else the merge; the shared rows fused
with paged keys, else on their own stream.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from baselines.base import KeyOrder, PreparedAttention
from baselines.fa4 import _fa4_for, fa4_probe
from baselines.hilberta_methods import _labeler, _layout_facts, _namer, _params, layout_for
from baselines.problem import Problem
from baselines.registry import MethodUnavailable, Param, one_of, register_family

SHARED_ROWS = ("auto", "stream", "fused")
SHARED_KEYS = ("auto", "merge", "paged")
KEY_ORDERS = ("tiles", "given")
MODE_LABELS = {"stream": "stream", "fused": "fused", "merge": "merge", "paged": "paged KV",
               "keys_given": "keys as given end to end"}
TMA_PAGE = 128  # FA4's own key block on Hopper at head dim 128
# Pages that FA4 loads by TMA, in order of preference: its own key block, and key blocks of 192 and 96 asked for
# through ``tile_mn`` (H200s, head dim 128, against the merge: 0.91-0.96x the time at 2048x2048 T=16 phases 0
# and 2, T=4 phase 1 and 4096x4096 T=16 phase 1; a block of 48 was 1.29x slower than the merge, so smaller
# pages stay with cp.async and FA4's block of 128)
TMA_PAGES = (TMA_PAGE, 192, 96)
TMA_HEAD_DIM = 128  # the head dim at which those blocks were measured (Flux's)
SHORT_SEQ = 8192  # "auto" pages the keys of sequences this short (Flux at 1024x1024 and 1536x1024) at any page


def _int32(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


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
        return cls(cu_q=_int32([r[0] for r in runs] + [runs[-1][1]], device),
                   start_k=_int32([r[2] for r in runs] + [runs[-1][3]], device),
                   used_k=_int32([r[3] - r[2] for r in runs], device),
                   max_q=max(r[1] - r[0] for r in runs), max_k=max(r[3] - r[2] for r in runs))


@dataclass(frozen=True)
class PagedRuns:
    """One FA4 call whose query runs each read their keys through a row of a page table."""

    cu_q: torch.Tensor  # int32 [n + 1]: query run bounds
    used_k: torch.Tensor  # int32 [n]: keys of each run
    table: torch.Tensor  # int32 [n, most pages of a run]: its pages in order (unused entries 0)
    page: int  # tokens per page
    max_q: int
    max_k: int
    key_tile: int | None = None  # the key block asked of FA4 (= page: TMA loads); None: FA4's own

    @classmethod
    def of(cls, runs: list[tuple[int, int, list[int]]], page: int, device: torch.device,
           key_tile: int | None = None) -> PagedRuns:
        """``runs``: (query start, query end, the pages of its keys), query runs in order and back to back."""
        runs = [r for r in runs if r[1] > r[0]]
        width = max(len(r[2]) for r in runs)
        table = [r[2] + [0] * (width - len(r[2])) for r in runs]
        return cls(cu_q=_int32([r[0] for r in runs] + [runs[-1][1]], device),
                   used_k=_int32([page * len(r[2]) for r in runs], device), table=_int32(table, device),
                   page=page, max_q=max(r[1] - r[0] for r in runs), max_k=page * width, key_tile=key_tile)


@dataclass(frozen=True)
class SplitPlan:
    """The calls of one layer's mask (device tensors made once, at prepare time)."""

    shared: int  # S: rows and keys [0, S)
    fused: bool  # the shared rows are the first sequence of ``keys`` or ``paged`` (rows of the whole sequence),
    #              else those calls run on the local rows and the shared rows are a dense call of their own
    keys: Sequences | None = None  # rows against the shared keys (and the wrapping tile's head run, which follows them)
    tiles: Sequences | None = None  # local rows (from 0) against their own tile's local keys
    paged: PagedRuns | None = None  # shared_keys="paged": instead of ``keys`` and ``tiles``, each run's whole key set


def _tiles_now(layout, layer: int) -> tuple[int, int, list[tuple[int, int]]]:
    """(head, tail, the tiles that do not wrap) in local positions: the wrapping tile is the tail run R1 =
    [tail, n) and the head run R0 = [0, head) (head 0: no tile wraps)."""
    bounds = layout.tile_bounds()
    head = layout.offset(layer) if layout.num_tiles > 1 else 0  # R0: one tile is every local key at any offset
    tail = bounds[-2] + head
    return head, tail, [(bounds[t] + head, bounds[t + 1] + head) for t in range(layout.num_tiles - (1 if head else 0))]


def _needs_shared(layout) -> None:
    if layout.shared_tokens == 0:
        raise MethodUnavailable("HilbertA as dense FA4 pieces needs shared tokens (text or a centre)")


def split_plan(layout, layer: int, device: torch.device, fused: bool = False) -> SplitPlan:
    _needs_shared(layout)
    s, n, length = layout.shared_tokens, layout.local_tokens, layout.seq_len
    head, tail, tiles = _tiles_now(layout, layer)
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


def tile_order(layout, layer: int) -> tuple[tuple[int, int], ...] | None:
    """The keys of a shifted layer in tile order, as sequence ranges: the shared keys, then the local ones from
    the layer's offset on, then those before it (the wrapping tile's R1 and R0 side by side); None where the
    layer's tiles are not shifted (its keys are in tile order already)."""
    s, n = layout.shared_tokens, layout.local_tokens
    head = _tiles_now(layout, layer)[0]
    return ((0, s), (s + head, s + n), (s, s + head)) if head else None


def page_size(layout, layer: int, keys_in_tile_order: bool = False) -> int:
    """The page of this phase: the first of ``TMA_PAGES`` that divides S, the local length and every run bound,
    else the largest size that does. Keys in tile order (`tile_order`) page as layer 0's do."""
    head, tail, tiles = _tiles_now(layout, 0 if keys_in_tile_order else layer)
    page = math.gcd(layout.shared_tokens, layout.local_tokens, head, tail, *(a for a, _ in tiles))
    return next((tma for tma in TMA_PAGES if page % tma == 0), page)


def key_tile(page: int, head_dim: int) -> int | None:
    """The key block to ask of FA4 so that it loads pages of ``page`` tokens by TMA; None where no measured
    block fits (FA4 keeps its own and loads the pages by cp.async)."""
    return page if page in TMA_PAGES and head_dim == TMA_HEAD_DIM else None


def modes(layout, layer: int, shared_rows: str, shared_keys: str, head_dim: int = TMA_HEAD_DIM) -> tuple[str, str]:
    """(shared_rows, shared_keys) this layer runs with, "auto" resolved as the module's docstring says."""
    if shared_keys == "auto":
        tma = key_tile(page_size(layout, layer), head_dim) is not None
        shared_keys = "paged" if tma or layout.seq_len <= SHORT_SEQ else "merge"
    if shared_rows == "auto":
        shared_rows = "fused" if shared_keys == "paged" else "stream"
    return shared_rows, shared_keys


def backend_of(shared_rows: str, shared_keys: str, key_block: int | None = None) -> str:
    """What a case's row says ran (the report's backend column): the calls, how paged keys load (``key_block``:
    the key block asked of FA4, TMA loads), and where the shared rows went."""
    if shared_keys == "paged":
        calls = f"fa4-cute-paged-kv ({f'TMA pages of {key_block}' if key_block else 'cp.async pages'})"
    else:
        calls = "fa4-cute-varlen+triton-merge"
    return f"{calls}, shared rows {'fused' if shared_rows == 'fused' else 'on a second stream'}"


def paged_plan(layout, layer: int, device: torch.device, fused: bool = False,
               head_dim: int | None = None, keys_in_tile_order: bool = False) -> SplitPlan:
    """Each local run against the shared keys' pages followed by its tile's (the wrapping tile: R1's, then
    R0's); fused: the shared rows first, against every page. ``head_dim``: ask FA4 for a key block of the page
    where `key_tile` says that loads by TMA (None: leave FA4's own). ``keys_in_tile_order``: K and V come in
    `tile_order` (local key i at S + (i - offset) mod n); the queries keep the sequence order."""
    _needs_shared(layout)
    s, n, length = layout.shared_tokens, layout.local_tokens, layout.seq_len
    head, tail, tiles = _tiles_now(layout, layer)
    page = page_size(layout, layer, keys_in_tile_order)
    pages = lambda a, b: list(range(a // page, b // page))  # noqa: E731  (key positions, whole pages)
    shift = head if keys_in_tile_order else 0  # where the tile of local rows [a, b) has its keys: S + a - shift
    shared = pages(0, s)
    runs = [(a, b, shared + pages(s + a - shift, s + b - shift)) for a, b in tiles]
    if head:  # the wrapping tile: R1's keys, then R0's (side by side in tile order)
        wrap = shared + (pages(s + tail - shift, s + n) if keys_in_tile_order
                         else pages(s + tail, s + n) + pages(s, s + head))
        runs = [(0, head, wrap), *runs, (tail, n, wrap)]
    if fused:
        runs = [(0, s, pages(0, length))] + [(a + s, b + s, keys) for a, b, keys in runs]
    tile = key_tile(page, head_dim) if head_dim is not None else None
    return SplitPlan(shared=s, fused=fused, paged=PagedRuns.of(runs, page, device, tile))


def _varlen(fwd, q, k, v, seqs: Sequences, out: torch.Tensor | None = None):
    """(out, lse [H, rows]) of one variable-length call; q [rows, H, D], k and v [keys, H, D]."""
    return fwd(q, k, v, cu_seqlens_q=seqs.cu_q, cu_seqlens_k=seqs.start_k, seqused_k=seqs.used_k,
               max_seqlen_q=seqs.max_q, max_seqlen_k=seqs.max_k, out=out, return_lse=True)[:2]


def _paged(fwd, q, k, v, runs: PagedRuns, out: torch.Tensor):
    """One call over page-table runs into ``out``; k and v [keys, H, D] viewed as [pages, P, H, D]."""
    as_pages = lambda t: t.view(-1, runs.page, *t.shape[1:])  # noqa: E731
    block = {} if runs.key_tile is None else {"tile_mn": (TMA_PAGE, runs.key_tile)}  # 128 query rows: FA4's own
    fwd(q, as_pages(k), as_pages(v), cu_seqlens_q=runs.cu_q, seqused_k=runs.used_k, page_table=runs.table,
        max_seqlen_q=runs.max_q, max_seqlen_k=runs.max_k, out=out, **block)


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
        rows = slice(0, None) if plan.fused else slice(s, None)  # the rows of the keys (or paged) call
        if not plan.fused:
            with _on(side):
                fwd(qs[b : b + 1, :s], ks[b : b + 1], vs[b : b + 1], out=out[b : b + 1, :s])
        if plan.paged is not None:
            _paged(fwd, qs[b, rows], ks[b], vs[b], plan.paged, out=out[b, rows])
        else:
            lse_keys = _varlen(fwd, qs[b, rows], ks[b], vs[b], plan.keys, out=out[b, rows])[1]
            lse_keys = lse_keys[:, s:] if plan.fused else lse_keys  # the local rows' part
            tile_part = _varlen(fwd, qs[b, s:], ks[b, s:], vs[b, s:], plan.tiles)
            merge_partials(out[b, s:], (out[b, s:], lse_keys), tile_part)
    if side is not None and not plan.fused:
        main.wait_stream(side)
    return out.transpose(1, 2)


def _modes_named(p) -> list[str]:
    """The modes given explicitly (not "auto"), in parameter order; keys as given where not offered in tile order."""
    named = [p[key] for key in ("shared_rows", "shared_keys") if p[key] != "auto"]
    return named + (["keys_given"] if p["key_order"] == "given" else [])


@register_family("hilberta_fa4split", category="hilberta",
                 params={**_params(("hilbert", "closed")),
                         "shared_rows": Param("auto", "auto | stream (their own dense call on a second CUDA stream) | "
                                                      "fused (the first sequence of the shared-keys call)",
                                              one_of(*SHARED_ROWS)),
                         "shared_keys": Param("auto", "auto | merge (a call of their own, merged by log-sum-exp) | "
                                                      "paged (ahead of each tile's keys in one call, FA4's paged KV)",
                                              one_of(*SHARED_KEYS)),
                 "key_order": Param("tiles", "tiles (offer callers that write K and V, end to end, each shifted "
                                             "layer's keys in tile order: TMA pages at every phase) | given",
                                    one_of(*KEY_ORDERS))},
                 method_name=lambda p: _namer("hilberta_fa4split")(p) + "".join(f"_{m}" for m in _modes_named(p)),
                 label=lambda p: _labeler("HilbertA as dense FA4 pieces")(p)
                 + "".join(f" ({MODE_LABELS[m]})" for m in _modes_named(p)),
                 probe=fa4_probe)
def build_hilberta_fa4split(problem: Problem, device: torch.device, *, tiles: int, centre: float, curve: str,
                            cycle: int, shared_rows: str, shared_keys: str, key_order: str) -> PreparedAttention:
    """HilbertA's mask (this layer's phase) as dense FA4 calls over variable-length runs (and a merge)."""
    _fa4_for(problem, device)
    from flash_attn.cute.interface import _flash_attn_fwd

    layout, layout_ms = layout_for(problem, tiles, centre, curve, cycle)
    layer = problem.layer
    rows, keys = modes(layout, layer, shared_rows, shared_keys, problem.head_dim)
    fused = rows == "fused"
    plan = (paged_plan(layout, layer, device, fused, problem.head_dim) if keys == "paged"
            else split_plan(layout, layer, device, fused))
    block = plan.paged.key_tile if plan.paged is not None else None
    side = torch.cuda.Stream(device) if rows == "stream" else None
    allowed = layout.allowed_pairs(layer)
    offered = (_keys_in_tile_order(layout, layer, device, problem.head_dim, _flash_attn_fwd)
               if key_order == "tiles" else None)
    return PreparedAttention(
        method="hilberta_fa4split", problem=problem,
        backend=backend_of(rows, keys, block),
        run=lambda q, k, v: split_attention(_flash_attn_fwd, plan, q, k, v, side),
        image_order=layout.permutation(), mask_rows=lambda rows_: layout.mask_rows(rows_, layer),
        allowed_pairs=allowed, computed_pairs=allowed,  # no masked block; FA4 pads each run's last blocks
        setup_ms={"layout": layout_ms},
        extra={**_layout_facts(layout, layer), "shared_rows": rows, "shared_keys": keys,
               **({"page_tokens": plan.paged.page, "key_block": block} if keys == "paged" else {}),
               **({"tile_order_key_block": offered[1]} if offered else {}),
               "computed_pairs_basis": "token pairs (the padding of each run's last FA4 blocks is not counted)"},
        key_order=offered[0] if offered else None)


def _keys_in_tile_order(layout, layer: int, device: torch.device, head_dim: int, fwd) -> tuple[KeyOrder, int] | None:
    """(the key order offered, its TMA key block) where the layer is shifted and its keys in tile order load by
    TMA: one paged call with the shared rows fused, as phase 0 runs; else None (nothing to gain)."""
    order = tile_order(layout, layer)
    if order is None:
        return None
    plan = paged_plan(layout, layer, device, fused=True, head_dim=head_dim, keys_in_tile_order=True)
    if plan.paged.key_tile is None:
        return None
    return KeyOrder(segments=order, run=lambda q, k, v: split_attention(fwd, plan, q, k, v)), plan.paged.key_tile
