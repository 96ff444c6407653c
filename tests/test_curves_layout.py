"""Curves and HilbertLayout: bijections, locality, SPEC figures, masks and the kernel's block table."""

import pytest
import torch

from kernels import HilbertLayout, curve_order
from kernels.curves import inverse

GRIDS = [(1, 1), (1, 7), (5, 1), (2, 2), (7, 5), (5, 7), (9, 9), (16, 16), (24, 40), (64, 96), (64, 64)]


def steps(order: torch.Tensor, width: int) -> torch.Tensor:
    """Chebyshev length of each step between consecutive cells (and of the wrap-around, last)."""
    rows, cols = order // width, order % width
    nxt = torch.roll(order, -1)
    return torch.maximum((nxt // width - rows).abs(), (nxt % width - cols).abs())


@pytest.mark.parametrize("height,width", GRIDS)
@pytest.mark.parametrize("curve", ["hilbert", "closed", "raster"])
def test_curve_is_a_bijection(height, width, curve):
    order = curve_order(height, width, curve)
    assert sorted(order.tolist()) == list(range(height * width))
    assert torch.equal(order[inverse(order)], torch.arange(height * width))


@pytest.mark.parametrize("side", [2, 4, 8, 16, 64, 128])
def test_hilbert_steps_are_4_neighbours_on_power_of_two_squares(side):
    order = curve_order(side, side, "hilbert")
    rows, cols = order // side, order % side
    l1 = (rows[1:] - rows[:-1]).abs() + (cols[1:] - cols[:-1]).abs()
    assert int(l1.max()) == 1


@pytest.mark.parametrize("side", [4, 8, 16, 64, 128])
def test_closed_curve_is_a_cycle_of_unit_steps_on_power_of_two_squares(side):
    order = curve_order(side, side, "closed")
    rows, cols = order // side, order % side
    nxt_r, nxt_c = torch.roll(rows, -1), torch.roll(cols, -1)
    assert int(((nxt_r - rows).abs() + (nxt_c - cols).abs()).max()) == 1  # wrap-around included


@pytest.mark.parametrize("height,width", [(7, 5), (5, 7), (9, 9), (24, 40), (64, 96), (12, 20)])
def test_generalized_curves_keep_steps_local(height, width):
    assert int(steps(curve_order(height, width, "hilbert"), width)[:-1].max()) <= 2
    assert int(steps(curve_order(height, width, "closed"), width).max()) <= 3


def tile_diameters(order: torch.Tensor, width: int, tiles: int) -> list[int]:
    n = order.numel()
    out = []
    for t in range(tiles):
        cells = order[t * n // tiles:(t + 1) * n // tiles]
        r, c = cells // width, cells % width
        out.append(max(int(r.max() - r.min()), int(c.max() - c.min())))
    return out


@pytest.mark.parametrize("height,width,tiles", [(16, 16, 16), (64, 64, 16), (24, 40, 15), (64, 96, 24)])
def test_hilbert_tiles_are_compact_where_raster_tiles_are_not(height, width, tiles):
    hilbert = tile_diameters(curve_order(height, width, "hilbert"), width, tiles)
    raster = tile_diameters(curve_order(height, width, "raster"), width, tiles)
    assert sum(hilbert) / tiles <= 0.5 * sum(raster) / tiles


# ---- layout --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side,tiles,density", [(64, 16, 0.349), (128, 16, 0.225), (64, 4, 0.479), (128, 4, 0.380)])
def test_density_matches_spec(side, tiles, density):
    layout = HilbertLayout(side, side, 512, tiles)
    assert layout.density() == pytest.approx(density, abs=5e-4)


@pytest.mark.parametrize("side,first,count", [(64, 24, 256), (128, 48, 1024)])
def test_centre_square_is_placed_first_in_row_major_order(side, first, count):
    layout = HilbertLayout(side, side, 512, 16)
    centre = layout.permutation()[:count]
    rows, cols = centre // side, centre % side
    assert layout.centre_tokens == count and layout.shared_tokens == 512 + count
    assert int(rows.min()) == first and int(rows.max()) == side - 1 - first
    assert int(cols.min()) == first and int(cols.max()) == side - 1 - first
    assert torch.equal(centre, torch.sort(centre).values)


def test_offsets_follow_the_sliding_schedule():
    layout = HilbertLayout(128, 128, 512, 16)  # N' = 15360, unit = 15360 // 64 = 240
    assert [layout.offset(layer) for layer in range(9)] == [0, 240, 480, 720, 0, 240, 480, 720, 0]


def test_permutation_and_inverse():
    layout = HilbertLayout(24, 40, 8, 7, 0.25, "closed")
    perm, inv = layout.permutation(), layout.inverse_permutation()
    assert torch.equal(perm[inv], torch.arange(24 * 40)) and torch.equal(inv[perm], torch.arange(24 * 40))


LAYOUTS = [
    dict(height=8, width=8, text_tokens=0, num_tiles=1, centre_fraction=0.0),
    dict(height=16, width=16, text_tokens=16, num_tiles=4),
    dict(height=16, width=16, text_tokens=16, num_tiles=16, curve="closed"),
    dict(height=12, width=20, text_tokens=8, num_tiles=5),
    dict(height=6, width=7, text_tokens=3, num_tiles=7, centre_fraction=0.3, curve="raster"),
    dict(height=9, width=9, text_tokens=0, num_tiles=11, centre_fraction=0.0),
]


@pytest.mark.parametrize("kwargs", LAYOUTS)
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_mask_semantics(kwargs, layer):
    layout = HilbertLayout(**kwargs)
    mask = layout.dense_mask(layer)
    s, n, length = layout.shared_tokens, layout.local_tokens, layout.seq_len
    assert mask[:s].all() and mask[:, :s].all()  # shared rows and columns are dense
    tiles = layout.local_tile_ids(layer)
    bounds = layout.tile_bounds()
    for i in range(n):  # every local query sees exactly the local keys of its own (shifted) tile
        seen = torch.nonzero(mask[s + i, s:]).flatten()
        expected = torch.nonzero(tiles == tiles[i]).flatten()
        assert torch.equal(seen, expected)
        shifted = (i - layout.offset(layer)) % n
        assert bounds[int(tiles[i])] <= shifted < bounds[int(tiles[i]) + 1]
    assert torch.equal(mask, mask.T)  # symmetric sliding: tiles shift for queries and keys alike
    assert layout.allowed_pairs(layer) == int(mask.sum())
    assert layout.density(layer) == pytest.approx(int(mask.sum()) / length**2)


@pytest.mark.parametrize("kwargs", LAYOUTS)
@pytest.mark.parametrize("layer", [0, 1, 3])
@pytest.mark.parametrize("block_m", [1, 4, 16, 128])
def test_block_table_covers_every_row_once_and_matches_the_mask(kwargs, layer, block_m):
    layout = HilbertLayout(**kwargs)
    table = layout.block_table(layer, block_m)
    mask = layout.dense_mask(layer)
    covered = torch.zeros(layout.seq_len, dtype=torch.int64)
    for q0, q1, *segments in table.tolist():
        assert 0 < q1 - q0 <= block_m
        covered[q0:q1] += 1
        keys = torch.zeros(layout.seq_len, dtype=torch.bool)
        for a, b in zip(segments[::2], segments[1::2]):
            keys[a:b] = True
        # every row of the block sees exactly the union of the block's segments: no per-element mask needed
        assert torch.equal(mask[q0:q1], keys.expand(q1 - q0, -1))
    assert torch.equal(covered, torch.ones_like(covered))


def test_computed_pairs_bound_the_allowed_pairs():
    layout = HilbertLayout(64, 64, 512, 16)
    assert layout.allowed_pairs() <= layout.computed_pairs(0, 128, 64) <= 1.1 * layout.allowed_pairs()


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=0, width=8, text_tokens=0, num_tiles=1), "non-empty"),
    (dict(height=8, width=8, text_tokens=-1, num_tiles=1), "text_tokens"),
    (dict(height=8, width=8, text_tokens=0, num_tiles=1, centre_fraction=1.0), "centre_fraction"),
    (dict(height=8, width=8, text_tokens=0, num_tiles=1, centre_fraction=-0.1), "centre_fraction"),
    (dict(height=8, width=8, text_tokens=0, num_tiles=0), "num_tiles"),
    (dict(height=8, width=8, text_tokens=0, num_tiles=61), "num_tiles"),  # 64 - 2x2 centre = 60 local
    (dict(height=8, width=8, text_tokens=0, num_tiles=4, curve="zorder"), "curve"),
    (dict(height=8, width=8, text_tokens=0, num_tiles=4, sliding_cycle=0), "sliding_cycle"),
])
def test_invalid_layouts_raise_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HilbertLayout(**kwargs)


def test_negative_layer_is_rejected():
    with pytest.raises(ValueError, match="layer"):
        HilbertLayout(8, 8, 0, 4).offset(-1)
