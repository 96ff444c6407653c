"""The STA Triton kernel on its own: explicit configs (the tuner's entry point), geometry, input checks."""

from __future__ import annotations

import os

import pytest
import torch

from baselines.window_masks import sliding_tile_mask
from kernels.config import KernelConfig
from kernels.reference import reference_attention, relative_error

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the STA kernel runs on the CPU only in the interpreter (TRITON_INTERPRET=1)")

sta = pytest.importorskip("baselines.sliding_tile_kernel")


def qkv(length, batch=1, heads=2, head_dim=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=gen, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("config", [KernelConfig(num_warps=2, num_stages=1), KernelConfig(num_warps=8, num_stages=4)])
def test_explicit_config_and_batch_match_the_reference(config):
    height, width, text = 9, 10, 6
    q, k, v = qkv(text + height * width, batch=2, head_dim=32)
    out = sta.sta_attention(q, k, v, height, width, text, tile=(4, 4), window=(3, 1), config=config)
    mask = sliding_tile_mask(height, width, text, (4, 4), (3, 1))
    assert relative_error(out, reference_attention(q, k, v, mask=mask.rows)) < 1e-5


def test_strided_inputs_are_read_through_their_strides():
    """q, k, v as views of one packed [B, L, 3, H, D] tensor, as a fused QKV projection gives them."""
    height, width, text, heads, head_dim = 8, 8, 4, 2, 16
    packed = torch.randn(1, text + height * width, 3, heads, head_dim)
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = sta.sta_attention(q, k, v, height, width, text, tile=(4, 4), window=(1, 2))
    mask = sliding_tile_mask(height, width, text, (4, 4), (1, 2))
    assert relative_error(out, reference_attention(q, k, v, mask=mask.rows)) < 1e-5


def test_geometry_of_a_non_divisible_grid():
    geometry = sta.StaGeometry(height=10, width=13, text_tokens=5, tile=(4, 8), window=(5, 3))
    assert geometry.n_tiles == (3, 2)
    assert geometry.effective_window == (3, 2)  # wider than the grid: the whole axis
    assert geometry.block == 32 and geometry.padded_tile == (4, 8)
    odd = sta.StaGeometry(height=10, width=13, text_tokens=5, tile=(3, 6), window=(1, 1))
    assert odd.padded_tile == (4, 8) and odd.block == 32
    # 32 rows per program: 1 text program sweeps ceil(135/32) = 5 key blocks; each of the 6 image tiles
    # visits 1 text key block and its 3 x 2 window tiles
    assert geometry.computed_pairs() == 32 * (1 * 5 * 32 + 6 * (1 * 32 + 6 * 32))


@pytest.mark.parametrize("tile, window", [((3, 6), (1, 2)), ((2, 8), (2, 1))])
def test_tiles_that_are_not_powers_of_two(tile, window):
    height, width, text = 7, 11, 3
    q, k, v = qkv(text + height * width)
    out = sta.sta_attention(q, k, v, height, width, text, tile=tile, window=window)
    mask = sliding_tile_mask(height, width, text, tile, window)
    assert relative_error(out, reference_attention(q, k, v, mask=mask.rows)) < 1e-5


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q[:, :, :-1], k[:, :, :-1], v[:, :, :-1]), "sequence length"),
    (lambda q, k, v: (q, k[:, :1], v), "must all be"),
    (lambda q, k, v: (q, k.half(), v), "share dtype"),
    (lambda q, k, v: (q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)), "dtype"),
    (lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12]), "head dim"),
    (lambda q, k, v: (torch.randn(1, 2, 16, 68).transpose(-1, -2), k, v), "contiguous in the head dim"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    q, k, v = qkv(4 + 64)
    with pytest.raises(ValueError, match=message):
        sta.sta_attention(*change(q, k, v), 8, 8, 4, tile=(4, 4), window=(3, 3))


def test_tiles_too_small_or_too_large_for_the_kernel_are_refused():
    with pytest.raises(ValueError, match="query rows per program"):
        sta.StaGeometry(8, 8, 0, tile=(2, 2), window=(3, 3))
    with pytest.raises(ValueError, match="query rows per program"):
        sta.StaGeometry(64, 64, 0, tile=(32, 16), window=(3, 3))
