"""Sliding tile attention (STA) on the row-major image grid, as methods: our Triton kernel and Flex.

Both take ``tile`` (th, tw tokens) and ``window`` (kh, kw tiles) and share one mask definition
(`baselines.window_masks.sliding_tile_mask`): text dense both ways, each query tile attends the clamped
window of tiles around it. The image stays in row-major order (``image_order`` None), so a key tile is
``th`` strided runs of ``tw`` tokens: the memory access pattern HilbertA's contiguous tiles avoid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from baselines.base import Availability, PreparedAttention
from baselines.flex_common import flex_probe, prepare_flex
from baselines.problem import Problem
from baselines.registry import Param, config_name, int_pair, kernel_config, register_family, triton_kernel_probe
from baselines.window_masks import sliding_tile_mask, window_allowed_pairs

STA_PARAMS = {
    "tile": Param((8, 8), "tile rows x cols in tokens: an int or a pair", int_pair),
    "window": Param((3, 3), "window rows x cols in tiles: an int or a pair", int_pair),
}


def _namer(prefix: str):
    def name(p: Mapping) -> str:
        (th, tw), (kh, kw) = p["tile"], p["window"]
        given = f"_cfg_{config_name(p['config'])}" if p.get("config") is not None else ""  # tune's candidates
        return f"{prefix}_tile{th}x{tw}_win{kh}x{kw}{given}"

    return name


def _labeler(title: str):
    def label(p: Mapping) -> str:
        (th, tw), (kh, kw) = p["tile"], p["window"]
        return f"{title} {th}x{tw} tiles, {kh}x{kw} window"

    return label


def _allowed_pairs(problem: Problem, tile, window) -> int:
    return window_allowed_pairs(problem.height, problem.width, problem.text_tokens, tile, window)


def _sta_probe(device: torch.device, **_params) -> Availability:
    return triton_kernel_probe(device, "baselines.sliding_tile_kernel", "triton-sta")


STA_CONFIG = Param(None, "a launch config (KernelConfig fields); default: the stored tuned one", kernel_config)


@register_family("sta", category="sliding_tile", params={**STA_PARAMS, "config": STA_CONFIG},
                 method_name=_namer("sta"), label=_labeler("STA"), probe=_sta_probe)
def build_sta(problem: Problem, device: torch.device, *, tile: tuple[int, int],
              window: tuple[int, int], config: dict | None) -> PreparedAttention:
    """Sliding tile attention through our Triton kernel (with the given launch config, else the stored one)."""
    from baselines.sliding_tile_kernel import KernelConfig, StaGeometry, sta_attention, sta_config

    geometry = StaGeometry(problem.height, problem.width, problem.text_tokens, tile, window)
    if config is None:
        config, source = sta_config(geometry, problem.head_dim, problem.torch_dtype, device)
    else:
        config, source = KernelConfig(**config), "given"
    mask = sliding_tile_mask(problem.height, problem.width, problem.text_tokens, tile, window)

    def run(q, k, v):
        return sta_attention(q, k, v, problem.height, problem.width, problem.text_tokens, tile, window, config)

    return PreparedAttention(
        method="sta", problem=problem, backend="triton-sta", run=run, image_order=None, mask_rows=mask.rows,
        allowed_pairs=_allowed_pairs(problem, tile, window), computed_pairs=geometry.computed_pairs(),
        extra={"mask": mask.name, "block": geometry.block, "n_tiles": list(geometry.n_tiles),
               "config": config.to_dict(), "config_source": source})


@register_family("sta_flex", category="sliding_tile", params=STA_PARAMS, method_name=_namer("sta_flex"),
                 label=_labeler("STA via Flex"), probe=lambda device, **_: flex_probe(device))
def build_sta_flex(problem: Problem, device: torch.device, *, tile: tuple[int, int],
                   window: tuple[int, int]) -> PreparedAttention:
    """Sliding tile attention's mask through FlexAttention."""
    mask = sliding_tile_mask(problem.height, problem.width, problem.text_tokens, tile, window)
    return prepare_flex("sta_flex", problem, device, mask, allowed_pairs=_allowed_pairs(problem, tile, window))
