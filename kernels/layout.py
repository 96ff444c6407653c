"""HilbertA's sequence layout: which token sits where, and which keys each query may see.

The joint sequence is permuted once per forward into ``[text (T_txt) | centre (C) | local (N')]``:
text first (as Flux has it), then the centred square of side round(f*H) x round(f*W) in row-major order,
then the remaining image cells along the curve. ``S = T_txt + C`` shared tokens are dense both ways.
The N' local positions are cut into T tiles with boundaries ``b_t = floor(t * N' / T)``; layer ``l``
shifts the tiles cyclically by ``o_l = (l mod cycle) * floor(N' / (T * cycle))``: local position i belongs
to tile ``tile((i - o_l) mod N')``, for queries and keys alike (SPEC-hilberta.md, Semantics 1-7).

`block_table` turns that into what the Triton kernel walks: query blocks that never straddle a tile, each
with at most three contiguous key segments (shared keys, and the tile as one or two runs after the wrap).
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from kernels.curves import CURVES, curve_order, inverse

# Columns of one block-table row: query rows [q_start, q_end), then NUM_SEGMENTS key ranges [start, end).
NUM_SEGMENTS = 3
TABLE_COLUMNS = 2 + 2 * NUM_SEGMENTS


class HilbertLayout:
    def __init__(self, height: int, width: int, text_tokens: int, num_tiles: int,
                 centre_fraction: float = 0.25, curve: str = "hilbert", sliding_cycle: int = 4):
        if height <= 0 or width <= 0:
            raise ValueError(f"image grid must be non-empty, got {height}x{width} tokens")
        if text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
        if not 0.0 <= centre_fraction < 1.0:
            raise ValueError(f"centre_fraction must be in [0, 1), got {centre_fraction}")
        if curve not in CURVES:
            raise ValueError(f"unknown curve {curve!r}; choose one of {CURVES}")
        if sliding_cycle < 1:
            raise ValueError(f"sliding_cycle must be >= 1, got {sliding_cycle}")
        self.height, self.width = int(height), int(width)
        self.text_tokens = int(text_tokens)
        self.centre_fraction = float(centre_fraction)
        self.curve = curve
        self.sliding_cycle = int(sliding_cycle)
        # round half up (not Python's banker's rounding) so 0.5 cases are deterministic and documented
        self.centre_rows = math.floor(centre_fraction * height + 0.5)
        self.centre_cols = math.floor(centre_fraction * width + 0.5)
        if self.centre_rows == 0 or self.centre_cols == 0:
            self.centre_rows = self.centre_cols = 0
        self.local_tokens = self.height * self.width - self.centre_rows * self.centre_cols
        if self.local_tokens <= 0:
            raise ValueError(f"centre_fraction {centre_fraction} leaves no local tokens on a "
                             f"{height}x{width} grid")
        if not 1 <= num_tiles <= self.local_tokens:
            raise ValueError(f"num_tiles must be in [1, {self.local_tokens}] (the local tokens of this "
                             f"layout), got {num_tiles}")
        self.num_tiles = int(num_tiles)

    def __repr__(self) -> str:
        return (f"HilbertLayout({self.height}x{self.width}, text={self.text_tokens}, T={self.num_tiles}, "
                f"f={self.centre_fraction}, curve={self.curve!r}, cycle={self.sliding_cycle})")

    # ---- sizes ---------------------------------------------------------------------------------------
    @property
    def centre_tokens(self) -> int:
        return self.centre_rows * self.centre_cols

    @property
    def shared_tokens(self) -> int:
        """S: text plus centre, dense both ways."""
        return self.text_tokens + self.centre_tokens

    @property
    def seq_len(self) -> int:
        return self.text_tokens + self.height * self.width

    @property
    def tile_len(self) -> int:
        """The nominal tile length N' // T (tiles are this long or one longer)."""
        return self.local_tokens // self.num_tiles

    # ---- permutation ---------------------------------------------------------------------------------
    @cached_property
    def _permutation(self) -> torch.Tensor:
        h, w = self.height, self.width
        r0, c0 = (h - self.centre_rows) // 2, (w - self.centre_cols) // 2
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        in_centre = ((rows >= r0) & (rows < r0 + self.centre_rows)
                     & (cols >= c0) & (cols < c0 + self.centre_cols))
        centre = torch.nonzero(in_centre).flatten()  # row-major
        order = curve_order(h, w, self.curve)
        local = order[~in_centre[order]]  # curve order, centre cells skipped
        return torch.cat([centre, local])

    def permutation(self) -> torch.Tensor:
        """LongTensor[H*W]: image position p (after the text) holds row-major image token perm[p]."""
        return self._permutation

    def inverse_permutation(self) -> torch.Tensor:
        return inverse(self._permutation)

    # ---- tiles and sliding ---------------------------------------------------------------------------
    def offset(self, layer: int) -> int:
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer}")
        step = self.local_tokens // (self.num_tiles * self.sliding_cycle)
        return (layer % self.sliding_cycle) * step

    def tile_bounds(self) -> list[int]:
        """b_0 = 0 < b_1 < ... < b_T = N' in the shifted frame."""
        n, t = self.local_tokens, self.num_tiles
        return [i * n // t for i in range(t + 1)]

    def local_tile_ids(self, layer: int) -> torch.Tensor:
        """Tile of every local position (unshifted index i in [0, N')) at this layer."""
        n, t = self.local_tokens, self.num_tiles
        shifted = (torch.arange(n) - self.offset(layer)) % n
        # largest tile id t' with b_t' <= shifted, i.e. t' * N' < (shifted + 1) * T
        return ((shifted + 1) * t - 1) // n

    def tile_runs(self, tile: int, layer: int) -> list[tuple[int, int]]:
        """The local positions of one tile as one or two contiguous runs [start, end) (wrap-around)."""
        bounds, n = self.tile_bounds(), self.local_tokens
        start = (bounds[tile] + self.offset(layer)) % n
        length = bounds[tile + 1] - bounds[tile]
        if start + length <= n:
            return [(start, start + length)]
        return [(start, n), (0, start + length - n)]

    # ---- masks and density ---------------------------------------------------------------------------
    def sequence_tile_ids(self, layer: int) -> torch.Tensor:
        """int64 [L]: -1 for shared tokens, else the tile of that sequence position."""
        return torch.cat([torch.full((self.shared_tokens,), -1, dtype=torch.int64), self.local_tile_ids(layer)])

    def mask_rows(self, rows: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """bool [len(rows), L]: which keys each of the given query rows attends to."""
        rows = torch.as_tensor(rows, dtype=torch.int64).cpu()
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.seq_len):
            raise ValueError(f"rows must lie in [0, {self.seq_len})")
        tiles = self.sequence_tile_ids(layer)
        q_tiles = tiles[rows]
        return (q_tiles[:, None] == -1) | (tiles[None, :] == -1) | (q_tiles[:, None] == tiles[None, :])

    def dense_mask(self, layer: int = 0) -> torch.Tensor:
        """bool [L, L] in the permuted sequence order (small problems: L^2 bytes)."""
        return self.mask_rows(torch.arange(self.seq_len), layer)

    def allowed_pairs(self, layer: int = 0) -> int:
        """Exact (query, key) pairs the mask allows; the same for every layer (tiles only shift)."""
        self.offset(layer)  # validates layer
        s, length, b = self.shared_tokens, self.seq_len, self.tile_bounds()
        tiles = sum((b[i + 1] - b[i]) ** 2 for i in range(self.num_tiles))
        return s * length + self.local_tokens * s + tiles

    def density(self, layer: int = 0) -> float:
        return self.allowed_pairs(layer) / self.seq_len**2

    # ---- what the kernel walks -----------------------------------------------------------------------
    def block_table(self, layer: int, block_m: int) -> torch.Tensor:
        """int32 [num_blocks, TABLE_COLUMNS]: q_start, q_end, then NUM_SEGMENTS key ranges (start, end).

        Shared rows come first (they sweep all L keys: scheduling the heaviest programs first evens out the
        tail). Local query blocks are cut inside each tile run, so no block straddles two tiles and the
        kernel needs no per-element tile mask, only a bound on the last key block of each segment.
        """
        if block_m <= 0:
            raise ValueError(f"block_m must be positive, got {block_m}")
        s, length = self.shared_tokens, self.seq_len
        rows: list[list[int]] = []
        for q0 in range(0, s, block_m):
            rows.append([q0, min(q0 + block_m, s), 0, length] + [0, 0] * (NUM_SEGMENTS - 1))
        for tile in range(self.num_tiles):
            runs = [(s + a, s + b) for a, b in self.tile_runs(tile, layer)]
            segments = _merge([(0, s)] + runs) if s else _merge(runs)
            padded = [x for seg in segments for x in seg] + [0, 0] * (NUM_SEGMENTS - len(segments))
            for a, b in runs:
                for q0 in range(a, b, block_m):
                    rows.append([q0, min(q0 + block_m, b)] + padded)
        return torch.tensor(rows, dtype=torch.int32).reshape(-1, TABLE_COLUMNS)

    def computed_pairs(self, layer: int, block_m: int, block_n: int) -> int:
        """(query, key) pairs the kernel computes with these block sizes: whole blocks, masked or not."""
        table = self.block_table(layer, block_m).to(torch.int64)
        seg_len = table[:, 3::2] - table[:, 2::2]
        keys = ((seg_len + block_n - 1) // block_n * block_n).sum(dim=1)
        return int((keys * block_m).sum())


def _merge(segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join touching ranges, so a tile run right after the shared keys is one segment."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(seg for seg in segments if seg[1] > seg[0]):
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged
