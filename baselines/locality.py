"""How 2-D-local a sparse method's attention is, measured on its exact mask (CPU only, no GPU).

For the image queries of a `PreparedAttention` (all of them, or a seeded sample on large grids):

- **neighbour share at radius r**: of the query's spatial neighbours within Chebyshev distance r on the
  image grid (itself excluded, cells outside the grid not counted), the fraction it attends to;
  averaged over queries. Dense attention scores 1.0 at every radius; NA with k = 2r + 1 scores 1.0 at r.
- **bounding box**: the mean area (grid cells) of the bounding box of the image keys a query attends,
  next to the mean number of those keys, and the mean fill (keys / box area): a compact 2-D window fills
  its box, a 1-D raster tile spans whole rows and fills a thin slice of it.

Text keys are ignored (every method attends them all). The mask comes from ``prepared.mask_rows`` and the
grid positions from ``prepared.sequence_coords()``, so any token order works.
"""

from __future__ import annotations

import torch

from baselines.base import PreparedAttention

DEFAULT_RADII = (1, 2, 4, 8)
DEFAULT_SAMPLE = 1024
CHUNK_ROWS = 256


def sampled_image_rows(prepared: PreparedAttention, sample: int | None, seed: int) -> torch.Tensor:
    """Sorted sequence positions of the image queries to measure: all, or ``sample`` drawn with ``seed``."""
    problem = prepared.problem
    if sample is None or problem.image_tokens <= sample:
        return torch.arange(problem.text_tokens, problem.seq_len)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(problem.image_tokens, generator=generator)[:sample]
    return problem.text_tokens + picked.sort().values


def _grid_masks(prepared: PreparedAttention, rows: torch.Tensor, cell_of_position: torch.Tensor) -> torch.Tensor:
    """bool [len(rows), H*W]: attended image keys of these query rows, indexed by row-major grid cell."""
    problem = prepared.problem
    if prepared.mask_rows is None:
        return torch.ones(rows.numel(), problem.image_tokens, dtype=torch.bool)
    allowed = prepared.mask_rows(rows).cpu()[:, problem.text_tokens:]
    grid = torch.zeros_like(allowed)
    grid[:, cell_of_position] = allowed
    return grid


def _neighbour_share(grid: torch.Tensor, q_r: torch.Tensor, q_c: torch.Tensor, radius: int, height: int,
                     width: int) -> torch.Tensor:
    """float64 [n]: share of each query's in-grid neighbours within ``radius`` that it attends (NaN if none)."""
    span = torch.arange(-radius, radius + 1)
    d_r, d_c = span.repeat_interleave(span.numel()), span.repeat(span.numel())
    not_self = (d_r != 0) | (d_c != 0)
    d_r, d_c = d_r[not_self], d_c[not_self]
    n_r, n_c = q_r[:, None] + d_r[None, :], q_c[:, None] + d_c[None, :]
    inside = (n_r >= 0) & (n_r < height) & (n_c >= 0) & (n_c < width)
    cells = (n_r.clamp(0, height - 1) * width + n_c.clamp(0, width - 1))
    attended = torch.gather(grid, 1, cells) & inside
    return attended.sum(1).double() / inside.sum(1).double()


def _bounding_boxes(grid: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(box area, key count) per query, float64 [n] each; area 0 for a query with no image key."""
    cells = grid.view(-1, height, width)
    rows_hit, cols_hit = cells.any(2), cells.any(1)

    def extent(hit: torch.Tensor) -> torch.Tensor:
        size = hit.shape[1]
        first = hit.int().argmax(1)
        last = size - 1 - hit.flip(1).int().argmax(1)
        return torch.where(hit.any(1), last - first + 1, 0)

    return (extent(rows_hit) * extent(cols_hit)).double(), grid.sum(1).double()


def locality(prepared: PreparedAttention, radii=DEFAULT_RADII, sample: int | None = DEFAULT_SAMPLE,
             seed: int = 0) -> dict:
    """Locality metrics of ``prepared``'s mask (see the module docstring), JSON-ready."""
    problem = prepared.problem
    height, width = problem.height, problem.width
    radii = tuple(int(r) for r in radii)
    if not radii or min(radii) < 1:
        raise ValueError(f"radii must be positive integers, got {radii}")
    coords = prepared.sequence_coords()
    cell_of_position = coords[problem.text_tokens:, 0] * width + coords[problem.text_tokens:, 1]
    rows = sampled_image_rows(prepared, sample, seed)

    shares = {r: [] for r in radii}
    areas, counts = [], []
    for start in range(0, rows.numel(), CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS]
        grid = _grid_masks(prepared, chunk, cell_of_position)
        q_r, q_c = coords[chunk, 0], coords[chunk, 1]
        for r in radii:
            shares[r].append(_neighbour_share(grid, q_r, q_c, r, height, width))
        area, count = _bounding_boxes(grid, height, width)
        areas.append(area)
        counts.append(count)

    area, count = torch.cat(areas), torch.cat(counts)
    fill = count / area.clamp_min(1)

    def mean(values: torch.Tensor) -> float | None:
        values = values[~values.isnan()]
        return float(values.mean()) if values.numel() else None

    return {
        "radii": list(radii),
        "neighbour_share": {f"r{r}": mean(torch.cat(shares[r])) for r in radii},
        "bbox_area_mean": mean(area),
        "image_keys_mean": mean(count),
        "bbox_fill_mean": mean(fill),
        "queries": int(rows.numel()),
        "sampled": bool(rows.numel() < problem.image_tokens),
        "seed": seed,
    }
