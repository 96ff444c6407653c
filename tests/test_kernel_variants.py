"""The kernel's loop and load variants (`KernelConfig.qk_ahead`, `.tma_qo`) against the exact reference.

Each is an exact rewrite of a loop or launch form the other tests cover: under the interpreter its output is
bitwise the base form's, and it matches `reference_attention` at every phase, on hand-made block tables with
empty segments and one-block rows too.
"""

import dataclasses

import pytest
import torch

from kernels import HilbertLayout, KernelConfig, hilbert_attention, reference_attention, relative_error
from kernels.hilbert_attention import launch
from kernels.layout import TABLE_COLUMNS

TOL = {torch.float32: 1e-5, torch.float16: 5e-3}  # as in test_hilbert_attention.py
SMALL = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
QK_AHEAD = dataclasses.replace(SMALL, flat_loop=True, qk_ahead=True)
QK_AHEAD_TMA = dataclasses.replace(QK_AHEAD, tma=True)
TMA_QO = dataclasses.replace(SMALL, block_m=32, tma_qo=True)  # 32-row blocks: more of them end mid-tile
ALL = dataclasses.replace(QK_AHEAD_TMA, head_major=True, tma_qo=True)
VARIANTS = [QK_AHEAD, QK_AHEAD_TMA, TMA_QO, ALL]
# every variant next to the form it rewrites
BASES = [(QK_AHEAD, dataclasses.replace(QK_AHEAD, qk_ahead=False)),
         (QK_AHEAD_TMA, dataclasses.replace(QK_AHEAD_TMA, qk_ahead=False)),
         (TMA_QO, dataclasses.replace(TMA_QO, tma_qo=False))]
LAYOUT = HilbertLayout(10, 14, 8, 5)  # non-square, text and centre, tiles of 21 or 22 tokens: partial blocks


def qkv(length, dtype, device, batch=1, heads=2, head_dim=32, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=gen, device=device, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layer", [0, 1, 3])  # layer 0 has no wrapped tile, 1 and 3 have one
def test_variant_matches_reference(config, dtype, layer, device):
    q, k, v = qkv(LAYOUT.seq_len, dtype, device, seed=layer)
    out = hilbert_attention(q, k, v, LAYOUT, layer, config=config)
    ref = reference_attention(q, k, v, lambda rows: LAYOUT.mask_rows(rows, layer))
    assert relative_error(out, ref) <= TOL[dtype]  # inf (so failing) on any NaN


@pytest.mark.parametrize("variant,base", BASES, ids=lambda c: c.name)
def test_variant_is_the_base_form_exactly(variant, base, device):
    """The same arithmetic in the same order: bitwise equal under the interpreter (within fp32 rounding on a
    GPU, where the compiler may schedule the two forms differently)."""
    q, k, v = qkv(LAYOUT.seq_len, torch.float32, device)
    out, expected = (hilbert_attention(q, k, v, LAYOUT, 2, config=c) for c in (variant, base))
    if device == "cpu":
        assert torch.equal(out, expected)
    else:
        assert relative_error(out, expected) <= TOL[torch.float32]


# A hand-made block table over L = 40 keys: (q_start, q_end, then three key segments). Rows with an empty
# first or middle segment, a row with a single block of a single key, a partial last block.
TABLE = [[0, 16, 0, 40, 0, 0, 0, 0],  # all keys: 3 blocks of 16, the last one 8 keys
         [16, 20, 0, 5, 0, 0, 9, 20],  # empty middle segment
         [20, 33, 30, 31, 0, 0, 0, 0],  # one block (total == 1) holding one key
         [33, 40, 0, 0, 3, 19, 0, 0]]  # empty first segment, one full block


def table_mask(table: list[list[int]], length: int) -> torch.Tensor:
    mask = torch.zeros(length, length, dtype=torch.bool)
    for q0, q1, *segments in table:
        for lo, hi in zip(segments[::2], segments[1::2]):
            mask[q0:q1, lo:hi] = True
    return mask


@pytest.mark.parametrize("config", [dataclasses.replace(SMALL, flat_loop=True)] + VARIANTS, ids=lambda c: c.name)
def test_empty_segments_and_one_block_rows(config, device):
    """One head: every row of the hand-made table is one program."""
    length = 40
    assert len(TABLE[0]) == TABLE_COLUMNS
    q, k, v = qkv(length, torch.float32, device, heads=1, head_dim=16)
    out = torch.zeros_like(q)
    launch(q, k, v, out, torch.tensor(TABLE, dtype=torch.int32, device=device), config)
    ref = reference_attention(q, k, v, table_mask(TABLE, length))
    assert relative_error(out, ref) <= TOL[torch.float32]


def test_qk_ahead_without_the_flat_loop_raises(device):
    q, k, v = qkv(LAYOUT.seq_len, torch.float32, device)
    with pytest.raises(ValueError, match="flat_loop"):
        hilbert_attention(q, k, v, LAYOUT, config=dataclasses.replace(SMALL, qk_ahead=True))


def test_config_names_show_the_variants():
    assert SMALL.name == "m16_n16_w4_s1"
    assert ALL.name == "m16_n16_w4_s1_flat_tma_hm_qkahead_tmaqo"
