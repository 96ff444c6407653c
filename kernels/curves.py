"""Space-filling orders of an H x W token grid: Hilbert (any size), closed Hilbert cycle, raster.

Every order is returned as a LongTensor ``order`` of length H*W where ``order[d]`` is the row-major index
(row * W + col) of the d-th cell visited. ``inverse(order)[flat]`` is the visiting rank of a cell.

- ``hilbert``: the generalized Hilbert curve for rectangles ("gilbert"): on 2^p x 2^p grids it is the
  classic Hilbert curve (every step moves to a 4-neighbour); on other grids steps stay local (an odd
  side can force one diagonal step). It starts in the top-left cell and ends in a corner adjacent along
  the longer side.
- ``closed``: a Moore-like cycle: the grid is cut in two halves across its longer side, each half is
  filled by a generalized Hilbert curve that runs from the cut back to the cut, so the last cell is next to
  the first. Cyclic sliding tiles then wrap around without a jump across the image.
- ``raster``: row-major order, the control that HilbertA's locality claim is measured against.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import torch

CURVES = ("hilbert", "closed", "raster")


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Cells (x=col, y=row) of the rectangle spanned by the major axis (ax, ay) and the minor axis (bx, by)
    from corner (x, y), ending at (x + ax - sign(ax), y + ay - sign(ay)).

    The rectangle is split recursively: a long one into two halves along its major axis; otherwise into
    three parts (up the minor half, along the major axis, back down), choosing even splits where possible so
    that the pieces connect with unit steps.
    """
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)  # unit step along the major axis
    dbx, dby = _sign(bx), _sign(by)  # unit step along the minor axis
    if h == 1:  # a single row: walk it
        for i in range(w):
            yield x + i * dax, y + i * day
        return
    if w == 1:  # a single column: walk it
        for i in range(h):
            yield x + i * dbx, y + i * dby
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:  # long rectangle: two halves along the major axis
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        return
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    yield from _gilbert(x, y, bx2, by2, ax2, ay2)
    yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    yield from _gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby),
                        -bx2, -by2, -(ax - ax2), -(ay - ay2))


def _hilbert_cells(height: int, width: int) -> list[tuple[int, int]]:
    if width >= height:
        return list(_gilbert(0, 0, width, 0, 0, height))
    return list(_gilbert(0, 0, 0, height, width, 0))


def _closed_cells(height: int, width: int) -> list[tuple[int, int]]:
    """Two generalized Hilbert halves joined at both ends of the cut (see module docstring)."""
    if width >= height:
        if width < 2:
            return _hilbert_cells(height, width)
        left = width // 2
        # left half: from its bottom-right cell up to its top-right cell (major axis = the cut column)
        first = _gilbert(left - 1, height - 1, 0, -height, -left, 0)
        # right half: from its top-left cell down to its bottom-left cell
        second = _gilbert(left, 0, 0, height, width - left, 0)
        return [*first, *second]
    return [(x, y) for y, x in _closed_cells(width, height)]  # transpose the wide case


def _raster_cells(height: int, width: int) -> list[tuple[int, int]]:
    return [(col, row) for row in range(height) for col in range(width)]


_GENERATORS = {"hilbert": _hilbert_cells, "closed": _closed_cells, "raster": _raster_cells}


@lru_cache(maxsize=64)
def _curve_order_cpu(height: int, width: int, curve: str) -> torch.Tensor:
    cells = _GENERATORS[curve](height, width)
    order = torch.tensor([row * width + col for col, row in cells], dtype=torch.int64)
    if order.numel() != height * width or torch.unique(order).numel() != height * width:
        raise AssertionError(f"{curve} curve on {height}x{width} is not a bijection")  # a bug, not bad input
    return order


_device_cache: dict[tuple[int, int, str, str], torch.Tensor] = {}


def curve_order(height: int, width: int, curve: str = "hilbert",
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Row-major index of each cell in visiting order; cached per (H, W, curve, device)."""
    if curve not in _GENERATORS:
        raise ValueError(f"unknown curve {curve!r}; choose one of {CURVES}")
    if height <= 0 or width <= 0:
        raise ValueError(f"grid must be non-empty, got {height}x{width}")
    key = (height, width, curve, str(torch.device(device)))
    if key not in _device_cache:
        _device_cache[key] = _curve_order_cpu(height, width, curve).to(device)
    return _device_cache[key]


def inverse(order: torch.Tensor) -> torch.Tensor:
    """``inverse(order)[order[d]] == d``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv
