"""Mask semantics of the window methods and of HilbertA's Flex mask, against brute-force definitions."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.hilberta_methods import hilberta_mask
from baselines.window_masks import (
    neighborhood_mask,
    sliding_tile_mask,
    window_allowed_pairs,
    window_starts,
)
from kernels.layout import HilbertLayout


def _clamped_start(i: int, k: int, n: int) -> int:
    return min(max(i - k // 2, 0), max(n - k, 0))


def brute_sta_mask(height, width, text, tile, window) -> torch.Tensor:
    """STA by its definition, one (query, key) pair at a time."""
    (th, tw), (kh, kw) = tile, window
    n_h, n_w = math.ceil(height / th), math.ceil(width / tw)
    length = text + height * width
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:text, :] = True
    mask[:, :text] = True
    for q in range(height * width):
        r0 = _clamped_start(q // width // th, kh, n_h)
        c0 = _clamped_start(q % width // tw, kw, n_w)
        for key in range(height * width):
            kr, kc = key // width // th, key % width // tw
            mask[text + q, text + key] = r0 <= kr < r0 + kh and c0 <= kc < c0 + kw
    return mask


def brute_na_mask(height, width, text, k) -> torch.Tensor:
    length = text + height * width
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:text, :] = True
    mask[:, :text] = True
    for q in range(height * width):
        r0, c0 = _clamped_start(q // width, k, height), _clamped_start(q % width, k, width)
        for key in range(height * width):
            mask[text + q, text + key] = r0 <= key // width < r0 + k and c0 <= key % width < c0 + k
    return mask


STA_CASES = [  # (height, width, text, tile, window)
    (8, 8, 0, (4, 4), (3, 3)),
    (8, 8, 5, (4, 4), (1, 1)),
    (10, 13, 3, (4, 8), (2, 3)),  # not divisible: partial edge tiles; even window
    (12, 20, 8, (8, 8), (3, 3)),  # 2 x 3 tiles: the 3-tile window is clamped to the grid's 2 tile rows
    (7, 9, 2, (2, 4), (5, 2)),
]


@pytest.mark.parametrize("height, width, text, tile, window", STA_CASES)
def test_sta_mask_matches_its_definition(height, width, text, tile, window):
    mask = sliding_tile_mask(height, width, text, tile, window)
    assert torch.equal(mask.dense(), brute_sta_mask(height, width, text, tile, window))


@pytest.mark.parametrize("height, width, text, tile, window", STA_CASES)
def test_sta_closed_form_pair_count_is_exact(height, width, text, tile, window):
    expected = int(brute_sta_mask(height, width, text, tile, window).sum())
    assert window_allowed_pairs(height, width, text, tile, window) == expected
    assert sliding_tile_mask(height, width, text, tile, window).allowed_pairs() == expected


def test_sta_window_is_clamped_at_the_borders():
    """On a 4 x 4 grid of 2x2 tiles with a 3x3 window, a corner tile sees tiles 0..2 on both axes,
    an inner tile sees the 3 tiles centred on it, and the window never shrinks."""
    mask = sliding_tile_mask(8, 8, 0, (2, 2), (3, 3)).dense()

    def seen_tiles(row, col):
        keys = mask[row * 8 + col].view(8, 8)
        return sorted({(r // 2, c // 2) for r, c in keys.nonzero().tolist()})

    corner = [(r, c) for r in range(3) for c in range(3)]
    assert seen_tiles(0, 0) == corner
    assert seen_tiles(7, 7) == [(r, c) for r in range(1, 4) for c in range(1, 4)]
    assert seen_tiles(2, 5) == [(r, c) for r in range(3) for c in range(1, 4)]
    assert set(mask.sum(1).tolist()) == {36}


def test_window_starts_clamp_like_natten():
    assert window_starts(10, 3).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 7]
    assert window_starts(5, 4).tolist() == [0, 0, 0, 1, 1]
    assert window_starts(2, 5).tolist() == [0, 0]  # wider than the axis: the whole axis


@pytest.mark.parametrize("height, width, text, k", [(8, 8, 0, 3), (8, 8, 4, 5), (12, 20, 8, 7), (9, 5, 2, 5)])
def test_na_mask_matches_natten_semantics(height, width, text, k):
    mask = neighborhood_mask(height, width, text, k).dense()
    assert torch.equal(mask, brute_na_mask(height, width, text, k))
    assert mask[:text].all() and mask[:, :text].all()  # text dense both ways
    image = mask[text:, text:]
    assert (image.sum(1) == k * k).all()  # k*k keys everywhere, corners included
    assert image.diagonal().all()  # a query always sees itself
    assert window_allowed_pairs(height, width, text, (1, 1), (k, k)) == int(mask.sum())


def test_na_interior_window_is_centred():
    mask = neighborhood_mask(9, 9, 0, 3).dense()
    keys = mask[4 * 9 + 4].view(9, 9).nonzero().tolist()
    assert keys == [[r, c] for r in (3, 4, 5) for c in (3, 4, 5)]


def test_mask_names_encode_their_parameters():
    assert sliding_tile_mask(64, 64, 512, (8, 8), (3, 3)).name == "sta_h64w64_t512_tile8x8_win3x3"
    assert neighborhood_mask(64, 96, 512, 17).name == "na_h64w96_t512_k17"
    mm = neighborhood_mask(8, 8, 0, 3).mask_mod("cpu")
    assert mm.__name__ == "na_h8w8_t0_k3"


def test_mask_mod_agrees_with_mask_rows_elementwise():
    """Flex calls mask_mod on scalar index tensors; it must give the same answer as the row masks."""
    mask = sliding_tile_mask(10, 13, 3, (4, 8), (2, 3))
    mask_mod = mask.mask_mod("cpu")
    dense = mask.dense()
    gen = torch.Generator().manual_seed(0)
    for q, kv in torch.randint(0, mask.seq_len, (200, 2), generator=gen).tolist():
        assert bool(mask_mod(0, 0, torch.tensor(q), torch.tensor(kv))) == bool(dense[q, kv])


@pytest.mark.parametrize("height, width, text, tiles, curve, layers", [
    (8, 8, 4, 4, "hilbert", (0, 1, 2, 3, 5)),
    (12, 20, 8, 7, "hilbert", (0, 3)),  # tiles not dividing N', offsets not aligned
    (16, 16, 16, 16, "closed", (0, 2)),
    (8, 8, 0, 3, "raster", (1,)),
])
def test_hilberta_flex_mask_is_the_layout_mask(height, width, text, tiles, curve, layers):
    layout = HilbertLayout(height, width, text, tiles, curve=curve)
    for layer in layers:
        assert torch.equal(hilberta_mask(layout, layer).dense(), layout.dense_mask(layer))


def test_hilberta_mask_name_changes_with_the_phase_only():
    layout = HilbertLayout(8, 8, 4, 4)
    names = [hilberta_mask(layout, layer).name for layer in range(5)]
    assert names[0] == names[4] and len(set(names[:4])) == 4


@pytest.mark.parametrize("first", ["inductor", "flex_common"])
@pytest.mark.parametrize("given, expected", [(None, "1 1"), ("3", "3 3")])
def test_inductor_compiles_with_one_thread_unless_the_environment_says_otherwise(given, expected, first):
    """Flex's compiles: one thread by default (the pool cost 10 s at every exit), the user's count if set,
    whether Inductor's config was imported before flex_common or after it (flex_common leaves that import,
    1.3 s of start-up, to the first compile)."""
    import os
    import subprocess
    import sys

    from baselines.flex_common import COMPILE_THREADS_ENV

    env = {key: value for key, value in os.environ.items() if key != COMPILE_THREADS_ENV}
    env.update({} if given is None else {COMPILE_THREADS_ENV: given})
    imports = {"inductor": "import torch._inductor.config, baselines.flex_common; loaded = True",
               "flex_common": "import baselines.flex_common; loaded = 'torch._inductor.config' in sys.modules"}
    code = (f"import os, sys; {imports[first]}; import torch._inductor.config as config; "
            f"print(os.environ[{COMPILE_THREADS_ENV!r}], config.compile_threads, loaded)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert found.stdout.strip() == f"{expected} {first == 'inductor'}"
