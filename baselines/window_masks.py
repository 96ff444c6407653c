"""Masks of the two row-major 2-D window methods, as tiny named functions, plus their exact pair counts.

Both live on the joint sequence ``[text | image tokens in row-major order]`` and treat text densely both
ways (text queries attend every key; every query attends every text key). An image query attends the
image keys of a window clamped at the grid borders, as STA and NATTEN do: along an axis of ``n`` units,
the window of ``k`` units around unit ``i`` starts at ``clamp(i - k // 2, 0, n - k)``, so it always
holds ``min(k, n)`` units, at corners too.

- `sliding_tile_mask`: units are tiles of ``th x tw`` tokens (partial at the far edges when the grid is
  not divisible); a query attends the ``kh x kw`` tiles around its own tile.
- `neighborhood_mask`: units are tokens; a query attends the ``k x k`` tokens around itself (NATTEN).

Each returns a `TokenMask` whose name encodes its parameters, e.g. ``sta_h64w64_t512_tile8x8_win3x3``.
"""

from __future__ import annotations

import math

import torch

from baselines.flex_common import TokenMask


def window_starts(n: int, k: int) -> torch.Tensor:
    """int64 [n]: first unit of the clamped window of ``k`` units around each of ``n`` units."""
    return (torch.arange(n) - k // 2).clamp(min=0, max=max(n - k, 0))


def window_rule(q, kv, t):
    """Text dense both ways; otherwise the key's unit must lie in the query's [r0, r1) x [c0, c1) window."""
    key_r, key_c = t["key_r"][kv], t["key_c"][kv]
    in_window = (key_r >= t["r0"][q]) & (key_r < t["r1"][q]) & (key_c >= t["c0"][q]) & (key_c < t["c1"][q])
    return t["text"][q] | t["text"][kv] | in_window


def _window_tables(height: int, width: int, text_tokens: int, unit: tuple[int, int],
                   window: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per sequence position: is it text, its window unit (key side), its window bounds (query side)."""
    (uh, uw), (kh, kw) = unit, window
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    key_r, key_c = rows // uh, cols // uw
    r0 = window_starts(math.ceil(height / uh), kh)[key_r]
    c0 = window_starts(math.ceil(width / uw), kw)[key_c]

    def with_text(image_values: torch.Tensor, text_value: int) -> torch.Tensor:
        return torch.cat([torch.full((text_tokens,), text_value, dtype=torch.int64), image_values])

    return {
        "text": torch.arange(text_tokens + height * width) < text_tokens,
        "key_r": with_text(key_r, -1), "key_c": with_text(key_c, -1),
        "r0": with_text(r0, 0), "r1": with_text(r0 + kh, 0),
        "c0": with_text(c0, 0), "c1": with_text(c0 + kw, 0),
    }


def sliding_tile_mask(height: int, width: int, text_tokens: int, tile: tuple[int, int],
                      window: tuple[int, int]) -> TokenMask:
    """STA on the row-major grid: the query's tile attends the ``window`` of tiles around it."""
    (th, tw), (kh, kw) = tile, window
    return TokenMask(
        name=f"sta_h{height}w{width}_t{text_tokens}_tile{th}x{tw}_win{kh}x{kw}",
        seq_len=text_tokens + height * width, rule=window_rule,
        tables=_window_tables(height, width, text_tokens, tile, window))


def neighborhood_mask(height: int, width: int, text_tokens: int, kernel: int) -> TokenMask:
    """Neighbourhood attention (NATTEN semantics): each query attends the ``kernel x kernel`` tokens
    around it, clamped at the borders."""
    return TokenMask(
        name=f"na_h{height}w{width}_t{text_tokens}_k{kernel}",
        seq_len=text_tokens + height * width, rule=window_rule,
        tables=_window_tables(height, width, text_tokens, (1, 1), (kernel, kernel)))


def _axis_key_cells(n: int, unit: int, k: int) -> int:
    """Sum over the ``n`` cells of one axis of the number of cells in that cell's window."""
    n_units = math.ceil(n / unit)
    starts = window_starts(n_units, k)
    cells_in_window = (torch.clamp((starts + k) * unit, max=n) - starts * unit)  # per query unit
    cells_per_unit = torch.clamp(n - torch.arange(n_units) * unit, max=unit)  # query cells in each unit
    return int((cells_per_unit * cells_in_window).sum())


def window_allowed_pairs(height: int, width: int, text_tokens: int, unit: tuple[int, int],
                         window: tuple[int, int]) -> int:
    """Exact allowed (query, key) pairs of a window mask, in closed form.

    Text rows: T * L; image rows to text keys: HW * T; image to image: the window is a product of a row
    range and a column range, so the sum over queries factorizes into (rows part) x (columns part).
    """
    seq_len = text_tokens + height * width
    image_pairs = (_axis_key_cells(height, unit[0], window[0]) * _axis_key_cells(width, unit[1], window[1]))
    return text_tokens * seq_len + height * width * text_tokens + image_pairs
