"""The tunable kernels (`TARGETS`): each one's problems and key from the settings, its candidates through the
registry, and its config space."""

from __future__ import annotations

from dataclasses import replace

from baselines.registry import resolve
from baselines.sliding_tile_kernel import StaGeometry, default_config
from kernels import config as kconfig
from kernels.config import KernelConfig
from kernels.layout import HilbertLayout

from .settings import TuneProblem, TuneSettings, TuneTarget, registry_candidate


def _hilberta_problems(settings: TuneSettings) -> list[TuneProblem]:
    out = []
    for problem in settings.problems:
        for tiles in settings.tiles:
            layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
            key = kconfig.config_key(problem.head_dim, problem.dtype, layout.seq_len, layout.tile_len)
            spec = {"method": "hilberta", "tiles": tiles}
            out.append(TuneProblem("hilberta", problem, resolve(spec).name, key, registry_candidate(spec),
                                   spec["method"]))
    return out


def _hilberta_space(head_dim: int, space: str) -> list[KernelConfig]:
    configs = kconfig.config_space(head_dim)
    if space == "quick":  # the usual pairings of warps with block rows, three stages (the best on an H100)
        configs = [c for c in configs if c.num_stages == 3 and c.num_warps == (4 if c.block_m == 64 else 8)]
    return configs


def _sta_problems(settings: TuneSettings) -> list[TuneProblem]:
    window = settings.sta_window
    out = []
    for problem in settings.problems:
        for tile in settings.sta_tiles:
            geometry = StaGeometry(problem.height, problem.width, problem.text_tokens, tile, window)
            key = kconfig.config_key(problem.head_dim, problem.dtype, geometry.seq_len, tile[0] * tile[1])
            spec = {"method": "sta", "tile": tile, "window": window}
            out.append(TuneProblem("sta", problem, resolve(spec).name, key, registry_candidate(spec), spec["method"],
                                   default=default_config(tile[0] * tile[1])))
    return out


def _sta_space(head_dim: int, space: str) -> list[KernelConfig]:
    """STA's block sizes follow its tile shape: only num_warps and num_stages are knobs. 128-token tiles fit
    one stage only (an H200: two need 288 KB of shared memory), so the quick space keeps it."""
    default = kconfig.DEFAULTS["sta"]
    knobs = [(warps, stages) for warps in (4, 8) for stages in (1, 2, 3, 4)]
    if space == "quick":
        knobs = [(w, s) for w, s in knobs if s in (1, 2, 3)]
    return [replace(default, num_warps=w, num_stages=s) for w, s in knobs]


TARGETS = {
    "hilberta": TuneTarget("hilberta", "triton-hilberta", _hilberta_problems, _hilberta_space),
    "sta": TuneTarget("sta", "triton-sta", _sta_problems, _sta_space),
}

