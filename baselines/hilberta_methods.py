"""HilbertA behind the common interface: our Triton kernel, the same mask through FlexAttention, and the
raster-curve control.

- ``hilberta``: `kernels.hilbert_attention` on a `HilbertLayout` (tiles T, centre fraction f, curve,
  sliding cycle); ``problem.layer`` picks the sliding phase.
- ``hilberta_flex``: the identical mask (`HilbertLayout.sequence_tile_ids`) as a Flex block mask; what a
  user would pick instead of a custom kernel.
- ``hilberta_raster``: the layout with a raster curve through our kernel, i.e. row-major 1-D sliding
  tiles: same kernel, same density, only the locality of the order differs.

Layouts are cached per parametrization, so the per-phase block tables the kernel caches on them are
built once per suite. Everything from `kernels` is imported lazily: a machine without Triton still lists
these methods (as unavailable) instead of failing to import the registry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache

import torch

from baselines.base import Availability, PreparedAttention
from baselines.flex_common import TokenMask, flex_probe, prepare_flex
from baselines.problem import Problem
from baselines.registry import (
    Param,
    config_name,
    fraction,
    kernel_config,
    one_of,
    positive_int,
    register_family,
    triton_kernel_probe,
)

DEFAULTS = {"tiles": 16, "centre": 0.25, "curve": "hilbert", "cycle": 4}
ROW_PARTS = ("all", "shared", "local")  # the query blocks the kernel runs: all, or one kind (its anatomy)


def _params(curves: tuple[str, ...]) -> dict[str, Param]:
    params = {
        "tiles": Param(DEFAULTS["tiles"], "number of tiles T, a positive int", positive_int),
        "centre": Param(DEFAULTS["centre"], "centre fraction f in [0, 1); 0 disables the shared centre", fraction),
        "cycle": Param(DEFAULTS["cycle"], "sliding cycle (phases), a positive int", positive_int),
    }
    if len(curves) > 1:
        params["curve"] = Param(DEFAULTS["curve"], " | ".join(curves), one_of(*curves))
    return params


def _namer(prefix: str):
    """``hilberta_t16``; non-default parameters are appended: ``hilberta_t4_closed_f0_cyc2``."""

    def name(p: Mapping) -> str:
        parts = [prefix, f"t{p['tiles']}"]
        if p.get("curve", "hilbert") != "hilbert":  # the raster family has no curve parameter
            parts.append(p["curve"])
        if p["centre"] != DEFAULTS["centre"]:
            parts.append(f"f{p['centre']:g}")
        if p["cycle"] != DEFAULTS["cycle"]:
            parts.append(f"cyc{p['cycle']}")
        if p.get("config") is not None:  # a launch config given, not looked up (tune's candidates)
            parts.append(f"cfg_{config_name(p['config'])}")
        if p.get("rows", "all") != "all":  # the kernel's anatomy: one kind of query rows only
            parts.append(f"{p['rows']}_rows")
        return "_".join(parts)

    return name


def _labeler(title: str):
    def label(p: Mapping) -> str:
        extras = [p["curve"]] if p.get("curve", "hilbert") != "hilbert" else []
        extras += [f"f={p['centre']:g}"] if p["centre"] != DEFAULTS["centre"] else []
        extras += [f"cycle {p['cycle']}"] if p["cycle"] != DEFAULTS["cycle"] else []
        extras += [f"config {config_name(p['config'])}"] if p.get("config") is not None else []
        extras += [f"{p['rows']} rows only"] if p.get("rows", "all") != "all" else []
        return f"{title} T={p['tiles']}" + (f" ({', '.join(extras)})" if extras else "")

    return label


@lru_cache(maxsize=64)
def _cached_layout(height: int, width: int, text_tokens: int, tiles: int, centre: float, curve: str,
                   cycle: int):
    from kernels.layout import HilbertLayout

    layout = HilbertLayout(height, width, text_tokens, tiles, centre_fraction=centre, curve=curve,
                           sliding_cycle=cycle)
    layout.permutation()  # computes the curve now, inside the timed layout step
    return layout


def layout_for(problem: Problem, tiles: int, centre: float, curve: str, cycle: int):
    """(HilbertLayout, ms to build it; ~0 when cached)."""
    start = time.perf_counter()
    layout = _cached_layout(problem.height, problem.width, problem.text_tokens, tiles, centre, curve, cycle)
    return layout, (time.perf_counter() - start) * 1e3


def _layout_facts(layout, layer: int) -> dict:
    return {"shared_tokens": layout.shared_tokens, "local_tokens": layout.local_tokens,
            "tile_len": layout.tile_len, "offset": layout.offset(layer), "curve": layout.curve}


def _kernel_probe(device: torch.device, **_params) -> Availability:
    return triton_kernel_probe(device, "kernels.hilbert_attention", "triton-hilberta")


def _anatomy_part(layout, layer: int, config, rows: str, device: torch.device) -> tuple:
    """The kernel over only the shared-row (text and centre) or only the local-row query blocks of its block
    table, to see where its time goes: (run, allowed pairs, computed pairs, extra). Shared rows are the first
    S of the sequence, each in blocks of its own, and attend every key."""
    from kernels.hilbert_attention import block_table, heavy_blocks, hilbert_attention_computed_pairs, launch

    s, length = layout.shared_tokens, layout.seq_len
    table = block_table(layout, layer, config.block_m, device)
    shared_blocks = -(-s // config.block_m)
    shared_computed = shared_blocks * config.block_m * (-(-length // config.block_n) * config.block_n)
    if rows == "shared":
        part, allowed, computed, span = table[:shared_blocks], s * length, shared_computed, [0, s]
    else:
        part, span = table[shared_blocks:], [s, length]
        allowed = layout.allowed_pairs(layer) - s * length
        computed = hilbert_attention_computed_pairs(layout, layer, config) - shared_computed

    heavy = heavy_blocks(part, length) if config.head_major else None  # a read-back: here, not in the timed call

    def run(q, k, v):
        out = torch.empty_like(q)
        launch(q, k, v, out, part, config, heavy=heavy)
        return out

    return run, allowed, computed, {"row_range": span}  # the correctness check reads only these rows


def _build_kernel(problem: Problem, device: torch.device, tiles: int, centre: float, curve: str,
                  cycle: int, config: dict | None = None, rows: str = "all") -> PreparedAttention:
    from kernels.config import KernelConfig
    from kernels.hilbert_attention import (
        default_config,
        hilbert_attention,
        hilbert_attention_computed_pairs,
    )

    layout, layout_ms = layout_for(problem, tiles, centre, curve, cycle)
    layer = problem.layer
    if config is None:
        config, source = default_config(layout, problem.head_dim, problem.torch_dtype, device)
    else:
        config, source = KernelConfig(**config), "given"

    if rows == "all":
        def run(q, k, v):
            return hilbert_attention(q, k, v, layout, layer, config)

        allowed, computed = layout.allowed_pairs(layer), hilbert_attention_computed_pairs(layout, layer, config)
        part = {}
    else:
        run, allowed, computed, part = _anatomy_part(layout, layer, config, rows, device)
    return PreparedAttention(
        method="hilberta", problem=problem, backend="triton-hilberta", run=run,
        image_order=layout.permutation(), mask_rows=lambda query_rows: layout.mask_rows(query_rows, layer),
        allowed_pairs=allowed, computed_pairs=computed, setup_ms={"layout": layout_ms},
        extra={**_layout_facts(layout, layer), "config": config.to_dict(), "config_source": source, **part})


KERNEL_PARAMS = {
    "config": Param(None, "a launch config (KernelConfig fields); default: the stored tuned one", kernel_config),
    "rows": Param("all", "all | shared | local: every query block, or the kernel's anatomy (only the shared-row "
                         "blocks, text and centre, or only the local-row blocks)", one_of(*ROW_PARTS)),
}


@register_family("hilberta", category="hilberta", params={**_params(("hilbert", "closed")), **KERNEL_PARAMS},
                 method_name=_namer("hilberta"), label=_labeler("HilbertA"), probe=_kernel_probe)
def build_hilberta(problem: Problem, device: torch.device, *, tiles: int, centre: float, curve: str,
                   cycle: int, config: dict | None, rows: str) -> PreparedAttention:
    """HilbertA through our Triton kernel (with the given launch config, else the stored tuned one)."""
    return _build_kernel(problem, device, tiles, centre, curve, cycle, config, rows)


@register_family("hilberta_raster", category="control", params=_params(("raster",)),
                 method_name=_namer("hilberta_raster"), label=_labeler("Row-major 1-D tiles"),
                 probe=_kernel_probe)
def build_hilberta_raster(problem: Problem, device: torch.device, *, tiles: int, centre: float,
                          cycle: int) -> PreparedAttention:
    """HilbertA's kernel and schedule on a raster (row-major) order: row-major 1-D sliding tiles."""
    return _build_kernel(problem, device, tiles, centre, "raster", cycle)


def _same_tile_rule(q, kv, t):
    """Shared (tile -1) dense both ways; local tokens attend their own tile."""
    q_tile, kv_tile = t["tile"][q], t["tile"][kv]
    return (q_tile == -1) | (kv_tile == -1) | (q_tile == kv_tile)


def hilberta_mask(layout, layer: int) -> TokenMask:
    """HilbertA's mask for one sliding phase, as a Flex-ready token mask."""
    phase = layer % layout.sliding_cycle
    name = (f"hilberta_h{layout.height}w{layout.width}_t{layout.text_tokens}_T{layout.num_tiles}"
            f"_f{layout.centre_fraction:g}_{layout.curve}_cyc{layout.sliding_cycle}_phase{phase}")
    return TokenMask(name=name, seq_len=layout.seq_len, rule=_same_tile_rule,
                     tables={"tile": layout.sequence_tile_ids(layer)})


@register_family("hilberta_flex", category="hilberta", params=_params(("hilbert", "closed")),
                 method_name=_namer("hilberta_flex"), label=_labeler("HilbertA via Flex"),
                 probe=lambda device, **_: flex_probe(device))
def build_hilberta_flex(problem: Problem, device: torch.device, *, tiles: int, centre: float, curve: str,
                        cycle: int) -> PreparedAttention:
    """HilbertA's mask through FlexAttention (block mask over the same permuted order)."""
    layout, layout_ms = layout_for(problem, tiles, centre, curve, cycle)
    return prepare_flex("hilberta_flex", problem, device, hilberta_mask(layout, problem.layer),
                        image_order=layout.permutation(), allowed_pairs=layout.allowed_pairs(problem.layer),
                        setup_ms={"layout": layout_ms}, extra=_layout_facts(layout, problem.layer))
