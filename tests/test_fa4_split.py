"""HilbertA as dense FA4 pieces (`baselines.fa4_split`): the decomposition and the log-sum-exp merge are exact.

FA4 itself needs a Hopper GPU, so here its ``_flash_attn_fwd`` is stood in for by an exact dense attention
with the same calling convention (batch [B, L, H, D] or variable-length [total, H, D] with ``cu_seqlens``,
``out=``, natural-log ``lse``); the merge is the real Triton kernel, in the interpreter on the CPU. A wrong
piece (a key set too many or too few, a tile off by one, the wrap tile's rows out of order, the merge's
weights) changes rows and fails against the exact reference under the layout's own mask.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.fa4 import fa4_probe
from baselines.base import KeyOrder
from baselines.fa4_split import (SHORT_SEQ, TMA_PAGE, backend_of, key_tile, modes, page_size, paged_plan,
                                 split_attention, split_plan, tile_order)
from baselines.problem import Problem
from baselines.registry import MethodUnavailable, resolve
from harness.measure.correctness import CorrectnessPolicy, check_correctness
from kernels.layout import HilbertLayout
from kernels.lse_merge import merge_partials
from kernels.reference import reference_attention, relative_error

def _attend(q, k, v):
    """[Lq, H, D] x [Lk, H, D] -> (out [Lq, H, D], lse [H, Lq]) in float32."""
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v.float())
    return out, lse


def _paged_keys(k, table, used):
    """FA4's paged KV: k [pages, P, H, D]; a sequence's keys are its table row's pages in order, ``used`` of them."""
    page = k.shape[1]
    assert len(table) * page >= used and used > 0
    return torch.cat([k[p] for p in table[: -(-used // page)]])[:used]


def fake_fwd(q, k, v, *, out=None, return_lse=False, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
             page_table=None, max_seqlen_q=None, max_seqlen_k=None, tile_mn=None):
    """FA4's ``_flash_attn_fwd`` calling convention, computed exactly: sequence i of a variable-length call is
    queries [cu_q[i], cu_q[i+1]) against keys from cu_k[i], seqused_k[i] of them (as FA4's SeqlenInfoQK reads),
    or, with ``page_table``, the first seqused_k[i] keys of the pages in its row. A key block asked for
    (``tile_mn``) must be the page: that is what makes FA4 load the pages by TMA."""
    if tile_mn is not None:
        assert page_table is not None and tile_mn == (128, k.shape[1]), (tile_mn, k.shape)
    if cu_seqlens_q is None:
        parts = [_attend(q[b], k[b], v[b]) for b in range(q.shape[0])]
        o = torch.stack([p[0] for p in parts]).to(q.dtype)
        lse = torch.stack([p[1] for p in parts])
    else:
        bounds_q, used_k = cu_seqlens_q.tolist(), seqused_k.tolist()
        assert bounds_q[0] == 0 and bounds_q[-1] == q.shape[0] and len(used_k) == len(bounds_q) - 1
        if page_table is not None:
            assert cu_seqlens_k is None and page_table.dtype == torch.int32  # as FA4 asserts
            assert page_table.shape[0] == len(used_k) and page_table.max() < k.shape[0]
            keys = [(_paged_keys(k, row, n), _paged_keys(v, row, n)) for row, n in zip(page_table.tolist(), used_k)]
        else:
            starts_k = cu_seqlens_k.tolist()
            assert len(starts_k) == len(bounds_q) and all(n > 0 and c + n <= k.shape[0] for c, n in zip(starts_k, used_k))
            keys = [(k[c : c + n], v[c : c + n]) for c, n in zip(starts_k, used_k)]
        parts = [_attend(q[a:b], *kv) for a, b, kv in zip(bounds_q, bounds_q[1:], keys)]
        assert max(b - a for a, b in zip(bounds_q, bounds_q[1:])) == max_seqlen_q and max(used_k) == max_seqlen_k
        o = torch.cat([p[0] for p in parts]).to(q.dtype)
        lse = torch.cat([p[1] for p in parts], dim=1)
    if out is not None:
        out.copy_(o)
        o = out
    return o, (lse if return_lse else None), None, None, None


# (height, width, text, tiles, centre): aligned and unaligned tiles, no text, no centre, one tile, a rectangle,
# more tiles than a short local region divides evenly
LAYOUTS = [(8, 8, 16, 4, 0.25), (8, 8, 0, 3, 0.25), (6, 10, 8, 5, 0.0), (8, 8, 16, 1, 0.25), (4, 4, 3, 7, 0.0)]


@pytest.mark.parametrize("plan_of", [split_plan, paged_plan], ids=["merge", "paged"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
@pytest.mark.parametrize("dims", LAYOUTS, ids=lambda d: "x".join(map(str, d)))
def test_split_equals_the_reference_under_the_layouts_mask(dims, layer, fused, plan_of, device):
    height, width, text, tiles, centre = dims
    layout = HilbertLayout(height, width, text, tiles, centre_fraction=centre)
    if plan_of is paged_plan and layout.shared_tokens == 0:
        pytest.skip("no shared tokens: refused (test_no_shared_tokens_is_refused)")
    gen = torch.Generator().manual_seed(layer)
    q, k, v = (torch.randn(2, 3, layout.seq_len, 16, generator=gen).to(device) for _ in range(3))
    out = split_attention(fake_fwd, plan_of(layout, layer, torch.device(device), fused), q, k, v)
    ref = reference_attention(q, k, v, mask=lambda rows: layout.mask_rows(rows, layer))
    assert out.shape == q.shape
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("layer, wraps", [(0, False), (1, True), (3, True)])
def test_the_wrapping_tile_reads_its_head_run_after_the_shared_keys(layer, wraps):
    """Shifted tiles: the head run R0 attends the shared keys and itself in one key run [0, S + |R0|), and R1's
    keys in the tile call; unshifted ones: one shared-key run for every local row."""
    layout = HilbertLayout(8, 8, 16, 4, centre_fraction=0.25)
    s, head = layout.shared_tokens, layout.offset(layer)
    plan = split_plan(layout, layer, torch.device("cpu"))
    keys = list(zip(plan.keys.cu_q.tolist(), plan.keys.start_k.tolist(), plan.keys.used_k.tolist()))
    if wraps:
        assert keys[0] == (0, 0, s + head) and keys[1] == (head, 0, s) and keys[2][1:] == (0, s + head)
        tail = keys[2][0]
        assert plan.tiles.cu_q[0] == 0 and plan.tiles.start_k[0] == tail  # R0's rows read R1's keys
        assert plan.tiles.used_k[0] == plan.tiles.used_k[-1] == layout.local_tokens - tail
    else:
        assert keys == [(0, 0, s)]
    assert plan.tiles.cu_q[-1] == layout.local_tokens  # every local row in exactly one run


@pytest.mark.parametrize("plan_of", [split_plan, paged_plan])
def test_no_shared_tokens_is_refused(plan_of):
    with pytest.raises(MethodUnavailable, match="needs shared tokens"):
        plan_of(HilbertLayout(8, 8, 0, 4, centre_fraction=0.0), 1, torch.device("cpu"))


# Flux's latent grids (pixels / 16) with 512 text tokens: the page of each phase (S = 512 + the centre), and
# whether FA4 is asked for a key block of the page (TMA loads) at head dim 128
@pytest.mark.parametrize("grid, tiles, pages, tma", [
    ((128, 128), 16, [192, 48, 96, 48], [True, False, True, False]),
    ((128, 128), 4, [128, 192, 128, 192], [True] * 4),  # gcds 768, 192, 384, 192: FA4's own block first
    ((256, 256), 4, [TMA_PAGE] * 4, [True] * 4), ((96, 64), 16, [8, 2, 4, 2], [False] * 4)])
def test_pages_divide_every_run_and_take_a_tma_block_where_they_can(grid, tiles, pages, tma):
    layout = HilbertLayout(*grid, 512, tiles, centre_fraction=0.25)
    assert [page_size(layout, layer) for layer in range(4)] == pages
    for layer in range(4):
        runs = paged_plan(layout, layer, torch.device("cpu"), head_dim=128).paged
        assert runs.key_tile == (pages[layer] if tma[layer] else None)
        assert paged_plan(layout, layer, torch.device("cpu"), head_dim=64).paged.key_tile is None  # not measured
        assert runs.page == pages[layer] and layout.seq_len % runs.page == 0
        used = runs.used_k.tolist()  # S shared keys + one tile's, every run (the wrapping tile's two runs too)
        assert used == [layout.shared_tokens + layout.tile_len] * len(used)
        assert runs.table.shape == (len(used), max(used) // runs.page)


def test_merge_weights_by_log_sum_exp(device):
    """Two halves of one key set, attended apart and merged (in place), equal attending the whole set."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(40, 2, 16, generator=gen).to(device) for _ in range(3))
    k[:, :, 0] += 4.0 * torch.arange(40, device=device).float()[:, None] / 40  # lse of the halves far apart
    whole, _ = _attend(q, k, v)
    o_a, lse_a = _attend(q, k[:17], v[:17])
    o_b, lse_b = _attend(q, k[17:], v[17:])
    merge_partials(o_a, (o_a, lse_a), (o_b, lse_b), block_rows=16)
    torch.testing.assert_close(o_a, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("shared_keys", ["merge", "paged"])
@pytest.mark.parametrize("shared_rows", ["stream", "fused"])
@pytest.mark.parametrize("pixels, tiles, layer", [((1024, 1024), 16, 0), ((1024, 1024), 16, 1), ((1536, 1024), 4, 3),
                                                   ((1024, 1024), 1, 2), ((1024, 1024), 7, 1), ((2048, 2048), 16, 1),
                                                   ((1024, 1024), 4, 0), ((1024, 1024), 4, 2)])  # TMA blocks of 192, 96
def test_fa4_pieces_are_exact_on_the_gpu(pixels, tiles, layer, shared_rows, shared_keys):
    """The real FA4 pieces in bf16 (every row checked against the exact reference under the layout's mask)."""
    if not fa4_probe(torch.device("cuda")):
        pytest.skip(fa4_probe(torch.device("cuda")).reason)
    method = resolve({"method": "hilberta_fa4split", "tiles": tiles, "shared_rows": shared_rows,
                      "shared_keys": shared_keys})
    prepared = method.prepare(Problem.from_pixels(*pixels, layer=layer), "cuda")
    result = check_correctness(prepared, CorrectnessPolicy(all_rows_max_len=8192), "cuda", seed=layer)
    assert result["passed"], result


@pytest.mark.parametrize("rows, keys, name, label_end", [
    ("auto", "auto", "hilberta_fa4split_t16", "T=16"),
    ("stream", "merge", "hilberta_fa4split_t16_stream_merge", "(stream) (merge)"),
    ("fused", "auto", "hilberta_fa4split_t16_fused", "T=16 (fused)"),
    ("auto", "paged", "hilberta_fa4split_t16_paged", "T=16 (paged KV)"),
    ("fused", "paged", "hilberta_fa4split_t16_fused_paged", "(fused) (paged KV)")])
@pytest.mark.parametrize("order", ["tiles", "given"])
def test_the_modes_are_told_apart_in_names_and_labels(rows, keys, name, label_end, order):
    method = resolve({"method": "hilberta_fa4split", "tiles": 16, "shared_rows": rows, "shared_keys": keys,
                      "key_order": order})
    if order == "given":
        name, label_end = name + "_keys_given", label_end + " (keys as given end to end)"
    assert method.name == name and method.label.endswith(label_end)


# auto: paged keys (and fused shared rows) where FA4 loads the pages by TMA or the sequence is short, else the
# merge with the shared rows on their own stream; Flux's latent grids with 512 text tokens
@pytest.mark.parametrize("grid, tiles, picked", [
    ((128, 128), 16, ["paged", "merge", "paged", "merge"]),  # 2048x2048: pages of 192, 48, 96, 48 tokens
    ((128, 128), 4, ["paged"] * 4),  # pages of 128, 192, 128, 192
    ((256, 256), 4, ["paged"] * 4),
    ((64, 64), 16, ["paged"] * 4)])  # 1024x1024: 4608 tokens
def test_auto_pages_the_keys_where_that_measured_faster(grid, tiles, picked):
    layout = HilbertLayout(*grid, 512, tiles, centre_fraction=0.25)
    got = [modes(layout, layer, "auto", "auto") for layer in range(4)]
    assert [keys for _, keys in got] == picked
    if layout.seq_len > SHORT_SEQ:  # no TMA block was measured at other head dims: long sequences merge there
        assert [modes(layout, layer, "auto", "auto", head_dim=64)[1] for layer in range(4)] == ["merge"] * 4
    assert all(rows == ("fused" if keys == "paged" else "stream") for rows, keys in got)
    assert (layout.seq_len <= SHORT_SEQ) == (grid == (64, 64))
    assert modes(layout, 0, "stream", "paged") == ("stream", "paged")  # explicit modes are kept
    # the report's backend column says which calls each phase ran
    for layer, (rows, keys) in enumerate(got):
        backend = backend_of(rows, keys, key_tile(page_size(layout, layer), 128))
        assert ("paged" in backend) == (keys == "paged") != ("merge" in backend)
        assert ("TMA pages" in backend) == (keys == "paged" and page_size(layout, layer) in (96, 128, 192))


@pytest.mark.parametrize("layer", [0, 2])  # pages of 192 and 96 at 1024x1024 T=4
def test_paged_keys_with_a_tma_block_equal_the_reference(layer):
    """The call that asks FA4 for a key block of the page (the stand-in asserts the block is the page)."""
    layout = HilbertLayout(64, 64, 512, 4, centre_fraction=0.25)
    plan = paged_plan(layout, layer, torch.device("cpu"), fused=True, head_dim=128)
    assert plan.paged.key_tile == page_size(layout, layer) == (192, None, 96)[layer]
    gen = torch.Generator().manual_seed(layer)
    q, k, v = (torch.randn(1, 2, layout.seq_len, 16, generator=gen) for _ in range(3))
    out = split_attention(fake_fwd, plan, q, k, v)
    rows = torch.arange(0, layout.seq_len, 7)
    ref = reference_attention(q, k, v, mask=lambda r: layout.mask_rows(r, layer), rows=rows)
    assert relative_error(out[:, :, rows], ref) < 1e-5


# ---- keys in tile order (offered to the end-to-end processor) -------------------------------------------------

@pytest.mark.parametrize("layer", [0, 1, 2, 3])
@pytest.mark.parametrize("dims", [d for d in LAYOUTS if d[2] or d[4]], ids=lambda d: "x".join(map(str, d)))
def test_keys_in_tile_order_equal_the_reference(dims, layer):
    """The paged call on K and V laid out in `tile_order` (the queries as given) is the layer's exact mask;
    the same call on keys as given is not, where the layer is shifted."""
    height, width, text, tiles, centre = dims
    layout = HilbertLayout(height, width, text, tiles, centre_fraction=centre)
    order = tile_order(layout, layer)
    assert (order is None) == (layout.offset(layer) == 0 or tiles == 1)
    plan = paged_plan(layout, layer, torch.device("cpu"), fused=True, keys_in_tile_order=True)
    gen = torch.Generator().manual_seed(layer)
    q, k, v = (torch.randn(1, 2, layout.seq_len, 16, generator=gen) for _ in range(3))
    arrange = KeyOrder(order or ((0, layout.seq_len),), run=None).arrange
    out = split_attention(fake_fwd, plan, q, arrange(k, 2), arrange(v, 2))
    ref = reference_attention(q, k, v, mask=lambda rows: layout.mask_rows(rows, layer))
    assert relative_error(out, ref) < 1e-5
    if order is not None:
        assert relative_error(split_attention(fake_fwd, plan, q, k, v), ref) > 1e-2


@pytest.mark.parametrize("grid, tiles, as_given, in_tile_order", [
    ((128, 128), 16, [192, 48, 96, 48], [192] * 4), ((256, 256), 16, [128, 192, 128, 192], [128] * 4)])
def test_keys_in_tile_order_page_as_layer_zero_does(grid, tiles, as_given, in_tile_order):
    """Flux at 2048x2048 T=16: pages of 48 (cp.async) at phases 1 and 3 as given (4096x4096: TMA pages); in tile
    order every phase pages as phase 0, by TMA, and the shifted layers offer that order (segments that cover the keys
    once)."""
    layout = HilbertLayout(*grid, 512, tiles, centre_fraction=0.25)
    assert [page_size(layout, layer) for layer in range(4)] == as_given
    assert [page_size(layout, layer, keys_in_tile_order=True) for layer in range(4)] == in_tile_order
    for layer in range(1, 4):
        plan = paged_plan(layout, layer, torch.device("cpu"), fused=True, head_dim=128, keys_in_tile_order=True)
        assert plan.paged.key_tile == in_tile_order[layer]
        segments = tile_order(layout, layer)
        covered = sorted(i for a, b in segments for i in range(a, b))
        assert covered == list(range(layout.seq_len)) and segments[1][0] == layout.shared_tokens + layout.offset(layer)


@pytest.mark.gpu
@pytest.mark.parametrize("pixels, tiles, layer", [((2048, 2048), 16, 1), ((2048, 2048), 16, 2), ((2048, 2048), 16, 3),
                                                   ((2048, 2048), 4, 1)])
def test_keys_in_tile_order_are_exact_on_the_gpu(pixels, tiles, layer):
    """The offered order's own call in bf16, K and V laid out as the end-to-end processor writes them."""
    if not fa4_probe(torch.device("cuda")):
        pytest.skip(fa4_probe(torch.device("cuda")).reason)
    method = resolve({"method": "hilberta_fa4split", "tiles": tiles})
    prepared = method.prepare(Problem.from_pixels(*pixels, layer=layer), "cuda")
    order = prepared.key_order
    assert order is not None and prepared.extra["tile_order_key_block"] in (128, 192)
    laid_out = dataclasses.replace(prepared, run=lambda q, k, v: order.run(q, order.arrange(k, 2), order.arrange(v, 2)))
    result = check_correctness(laid_out, CorrectnessPolicy(all_rows_max_len=8192), "cuda", seed=layer)
    assert result["passed"], result
