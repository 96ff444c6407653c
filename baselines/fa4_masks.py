"""The masks FlashAttention-4 runs, as plain data: block tables from a Flex `BlockMask`, and each mask's
integer formula for FA4's ``mask_mod`` on partial blocks. Nothing here imports flash_attn.

FA4's block sparsity takes per query block the count and the indices of the key blocks to visit, split
into *full* blocks (every pair allowed: no mask_mod) and *partial* ones (mask_mod decides per pair), the
same split Flex keeps (`kv_num_blocks`/`kv_indices` are its partial blocks, `full_kv_*` its full ones).
`fa4_block_tables` maps one onto the other, field names as `BlockSparseTensorsTorch` takes them.

On partial blocks FA4 asks a ``mask_mod`` whose arguments are CuTe SSA values, so table lookups are out
and each mask is an integer formula over the sequence positions ``q`` and ``kv`` with named constants:
`hilberta_rule` (shared-or-same-tile) and `window_rule` (STA and NA: a clamped window of units). A rule
is written once against ``const(name)``: with Python ints it runs on torch tensors (how the tests hold it
to the `TokenMask` it stands for), with CuTe constants it is the mask_mod (`baselines.fa4`). Rules use
only + - * // % comparisons & |, and every // and % sees non-negative operands on the rows where the
result is not anyway decided by a text/shared position (so C and Python division agree where it counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Const = Callable[[str], object]
Rule = Callable[[object, object, Const], object]

# BlockSparseTensorsTorch field <- Flex BlockMask attribute
_FLEX_TO_FA4 = {
    "mask_block_cnt": "kv_num_blocks",
    "mask_block_idx": "kv_indices",
    "full_block_cnt": "full_kv_num_blocks",
    "full_block_idx": "full_kv_indices",
}


def fa4_block_tables(block_mask) -> dict:
    """Keyword arguments of `BlockSparseTensorsTorch` for a Flex ``block_mask`` (forward, key blocks):
    int32 contiguous [B, H, M] counts and [B, H, M, N] indices (B, H may be 1: FA4 broadcasts), and the
    (query, key) block size. Full tables are None when the block mask keeps none."""
    tables = {}
    for fa4_name, flex_name in _FLEX_TO_FA4.items():
        table = getattr(block_mask, flex_name)
        tables[fa4_name] = None if table is None else table.to(torch.int32).contiguous()
    tables["block_size"] = tuple(int(s) for s in block_mask.BLOCK_SIZE)
    return tables


# ---- HilbertA: shared tokens dense both ways, local tokens within their (shifted) tile --------------------

def hilberta_constants(layout, layer: int) -> dict[str, int]:
    """Constants of `hilberta_rule` for one layout and layer (its sliding phase).

    Local position i = p - S lies in tile ``((i - o) mod N) * T + T - 1) // N``
    (`HilbertLayout.local_tile_ids`); ``base`` = k*N - S - o >= 0 turns ``(i - o) mod N`` into
    ``(p + base) % N`` with a non-negative dividend for every p >= 0.
    """
    shared, n, offset = layout.shared_tokens, layout.local_tokens, layout.offset(layer)
    wraps = -(-(shared + offset) // n)
    return {"shared": shared, "n": n, "t": layout.num_tiles, "t_minus_1": layout.num_tiles - 1,
            "base": wraps * n - shared - offset}


def hilberta_rule(q, kv, const: Const):
    def tile(p):
        return (((p + const("base")) % const("n")) * const("t") + const("t_minus_1")) // const("n")

    shared = const("shared")
    return (q < shared) | (kv < shared) | (tile(q) == tile(kv))


# ---- STA and NA: text dense both ways, image keys within a clamped window of units around the query --------

def window_constants(height: int, width: int, text_tokens: int, unit: tuple[int, int],
                     window: tuple[int, int]) -> dict[str, int]:
    """Constants of `window_rule` (as `baselines.window_masks`: units of ``unit`` tokens, ``window`` units)."""
    (uh, uw), (kh, kw) = unit, window
    n_rows, n_cols = -(-height // uh), -(-width // uw)
    return {"text": text_tokens, "w": width, "uh": uh, "uw": uw,
            "kh": kh, "half_h": kh // 2, "max_h": max(n_rows - kh, 0),
            "kw": kw, "half_w": kw // 2, "max_w": max(n_cols - kw, 0)}


def _in_window(query_unit, key_unit, size, half, last_start):
    """start <= key < start + size with start = clamp(query - half, 0, last_start), written without
    min/max: start <= x  <=>  x >= 0 and (x >= query - half or x >= last_start)."""
    low = query_unit - half
    at_or_after_start = (key_unit >= low) | (key_unit >= last_start)  # key_unit >= 0 always here
    before_end = (key_unit < size) | ((key_unit < low + size) & (key_unit < last_start + size))
    return at_or_after_start & before_end


def window_rule(q, kv, const: Const):
    def units(p):
        image = p - const("text")  # negative on text rows, which the text term decides anyway
        return (image // const("w")) // const("uh"), (image % const("w")) // const("uw")

    (q_row, q_col), (kv_row, kv_col) = units(q), units(kv)
    text = const("text")
    rows = _in_window(q_row, kv_row, const("kh"), const("half_h"), const("max_h"))
    cols = _in_window(q_col, kv_col, const("kw"), const("half_w"), const("max_w"))
    return (q < text) | (kv < text) | (rows & cols)


def evaluate(rule: Rule, constants: Mapping[str, int], q, kv):
    """A rule on torch index tensors (broadcasting), constants as Python ints: what the tests compare."""
    return rule(q, kv, constants.__getitem__)
