"""Locality metrics on tiny grids where the answer is known by hand or by brute force."""

from __future__ import annotations

import pytest
import torch

from baselines import registry
from baselines.locality import locality
from baselines.problem import Problem

RADII = (1, 2, 4, 8)


def prepared(spec, height=8, width=8, text=4):
    """Prepared on the CPU; locality reads only the mask and the order, so nothing is run."""
    problem = Problem(height, width, text_tokens=text, heads=1, head_dim=16, dtype="float32")
    return registry.resolve(spec).prepare(problem, "cpu")


def brute_locality(prep, radius: int) -> tuple[float, float, float]:
    """(mean neighbour share at radius, mean bbox area, mean image keys), one cell at a time."""
    problem = prep.problem
    height, width, text = problem.height, problem.width, problem.text_tokens
    coords = prep.sequence_coords().tolist()
    mask = prep.dense_mask()
    shares, areas, counts = [], [], []
    for q in range(text, problem.seq_len):
        qr, qc = coords[q]
        cells = {tuple(coords[key]) for key in range(text, problem.seq_len) if mask[q, key]}
        neighbours = [(r, c) for r in range(qr - radius, qr + radius + 1) for c in range(qc - radius, qc + radius + 1)
                      if (r, c) != (qr, qc) and 0 <= r < height and 0 <= c < width]
        shares.append(sum(cell in cells for cell in neighbours) / len(neighbours))
        rows, cols = [r for r, _ in cells], [c for _, c in cells]
        areas.append((max(rows) - min(rows) + 1) * (max(cols) - min(cols) + 1))
        counts.append(len(cells))
    n = len(shares)
    return sum(shares) / n, sum(areas) / n, sum(counts) / n


def test_dense_attention_is_perfectly_local_and_spans_the_grid():
    result = locality(prepared("sdpa_math"), RADII)
    assert result["neighbour_share"] == {f"r{r}": 1.0 for r in RADII}
    assert result["bbox_area_mean"] == 64 and result["image_keys_mean"] == 64 and result["bbox_fill_mean"] == 1.0
    assert result["queries"] == 64 and not result["sampled"]


@pytest.mark.parametrize("kernel, full_radius", [(3, 1), (5, 2)])
def test_na_sees_every_neighbour_within_its_half_window(kernel, full_radius):
    result = locality(prepared({"method": "na", "kernel": kernel}), (full_radius, full_radius + 1))
    assert result["neighbour_share"][f"r{full_radius}"] == 1.0
    assert result["neighbour_share"][f"r{full_radius + 1}"] < 1.0
    assert result["bbox_area_mean"] == kernel * kernel == result["image_keys_mean"]  # a full k x k square


def test_sta_own_tile_only_by_hand():
    """8x8 grid, 4x4 tiles, 1x1 window: each query sees exactly its 16-cell tile, a filled 4x4 box.
    At r=1 the cell (0, 0) has all 3 neighbours in its tile, (3, 3) only 3 of 8; the four tiles are
    mirror images, so the mean is that of the top-left tile, counted cell by cell below."""
    result = locality(prepared({"method": "sta", "tile": 4, "window": 1}, text=0), (1,))
    assert result["bbox_area_mean"] == 16 and result["image_keys_mean"] == 16 and result["bbox_fill_mean"] == 1.0
    # top-left tile, rows/cols 0..3: neighbours in-grid vs in-tile, per cell
    shares = []
    for r in range(4):
        for c in range(4):
            nbrs = [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)
                    and 0 <= r + dr < 8 and 0 <= c + dc < 8]
            shares.append(sum(nr < 4 and nc < 4 for nr, nc in nbrs) / len(nbrs))
    assert result["neighbour_share"]["r1"] == pytest.approx(sum(shares) / 16)


@pytest.mark.parametrize("spec", [{"method": "hilberta_flex", "tiles": 4},
                                  {"method": "hilberta_flex", "tiles": 6, "curve": "closed"},
                                  {"method": "sta_flex", "tile": [2, 4], "window": [3, 1]}])
def test_matches_brute_force_in_any_token_order(spec):
    """HilbertA permutes the image: locality must map sequence positions back to grid cells."""
    prep = prepared(spec, height=8, width=12, text=3)
    result = locality(prep, (1, 2))
    for radius in (1, 2):
        share, area, count = brute_locality(prep, radius)
        assert result["neighbour_share"][f"r{radius}"] == pytest.approx(share)
    assert result["bbox_area_mean"] == pytest.approx(area)
    assert result["image_keys_mean"] == pytest.approx(count)


def test_hilbert_tiles_are_more_local_than_raster_tiles():
    """The claim HilbertA rests on, at equal density: 16 tiles of a 16x16 grid are 4x4 squares along the
    Hilbert curve and single rows in raster order; a square holds more of each query's neighbours."""
    spec = {"method": "hilberta_flex", "tiles": 16, "centre": 0.0}
    hilbert = locality(prepared(spec, 16, 16, 0), (1,))
    raster = prepared(spec, 16, 16, 0)
    raster.image_order = torch.arange(256)  # the same tiles cut from row-major order
    raster_result = locality(raster, (1,))
    assert hilbert["image_keys_mean"] == raster_result["image_keys_mean"] == 16
    assert hilbert["bbox_area_mean"] == 16 and raster_result["bbox_area_mean"] == 16  # 4x4 vs 1x16
    assert hilbert["neighbour_share"]["r1"] > 1.5 * raster_result["neighbour_share"]["r1"]


def test_sampling_is_seeded_and_bounded():
    prep = prepared({"method": "na", "kernel": 3}, height=16, width=16, text=0)
    first = locality(prep, (1, 2), sample=50, seed=7)
    assert first["queries"] == 50 and first["sampled"]
    assert locality(prep, (1, 2), sample=50, seed=7) == first
    with pytest.raises(ValueError, match="radii"):
        locality(prep, (0,))
