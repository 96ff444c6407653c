"""Sparse peers at HilbertA's density: STA and NA parameters whose mask keeps as many pairs as HilbertA's.

A speedup at a different density says little; `matched_density(problem, tiles)` picks, for this problem,
the STA window (per candidate tile shape) and the NA kernel whose *token-level* density is closest to
HilbertA's (centre 0.25, ``tiles`` tiles) and within ``tolerance`` (2 percentage points) of it. Densities
come from closed forms (`HilbertLayout.allowed_pairs`, `window_allowed_pairs`): exact, cheap, no GPU.

Each match comes with its FlashAttention-4 twin (`FA4_TWINS`): the same mask, same parameters, through FA4
block sparsity (`baselines.fa4`), the strongest implementation of STA and NA there is: at equal density
the report's baseline is the faster of the two.
"""

from __future__ import annotations

import logging

from baselines.problem import Problem
from baselines.window_masks import window_allowed_pairs

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # absolute, in density (2 percentage points)
# STA tile shapes to match: 64-token square tiles (STA's usual 2-D tile) and 128-token tiles (a full
# 128-row query block on Hopper). Windows are kept near-square in tokens.
MATCH_TILES = ((8, 8), (16, 8))
# matched family -> the family running the same mask with the same parameters through FA4 block sparsity
FA4_TWINS = {"sta": "sta_fa4", "na": "na_fa4"}


def hilberta_density(problem: Problem, tiles: int, centre: float = 0.25) -> float:
    from kernels.layout import HilbertLayout

    layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles, centre_fraction=centre)
    return layout.allowed_pairs(problem.layer) / problem.seq_len**2


def sta_density(problem: Problem, tile: tuple[int, int], window: tuple[int, int]) -> float:
    return window_allowed_pairs(problem.height, problem.width, problem.text_tokens, tile, window) / problem.seq_len**2


def na_density(problem: Problem, kernel: int) -> float:
    return window_allowed_pairs(problem.height, problem.width, problem.text_tokens, (1, 1),
                                (kernel, kernel)) / problem.seq_len**2


def _sta_candidates(problem: Problem, tile: tuple[int, int]):
    th, tw = tile
    n_h, n_w = -(-problem.height // th), -(-problem.width // tw)
    for kh in range(1, n_h + 1):
        for kw in range(1, n_w + 1):
            if abs(kh * th - kw * tw) <= max(th, tw):  # near-square window in tokens
                yield {"method": "sta", "tile": tile, "window": (kh, kw)}, sta_density(problem, tile, (kh, kw))


def _na_candidates(problem: Problem):
    for kernel in range(1, min(problem.height, problem.width) + 1, 2):
        yield {"method": "na", "kernel": kernel}, na_density(problem, kernel)


def matched_density(problem: Problem, tiles: int, tolerance: float = TOLERANCE, strict: bool = False) -> list[dict]:
    """Registry specs of STA (one per tile shape in `MATCH_TILES`) and NA matching HilbertA's density.

    Each group contributes its closest candidate if it lies within ``tolerance``, followed by that
    candidate's FA4 twin (`FA4_TWINS`: same parameters, same mask); a group with none is
    logged with the closest density it could reach. ``strict`` raises ValueError (with that reason) when
    no group fits at all.
    """
    target = hilberta_density(problem, tiles)
    groups = {f"sta tile {th}x{tw}": _sta_candidates(problem, (th, tw)) for th, tw in MATCH_TILES}
    groups["na"] = _na_candidates(problem)
    specs, misses = [], []
    for group, candidates in groups.items():
        best = min(candidates, key=lambda cand: abs(cand[1] - target), default=None)
        if best is not None and abs(best[1] - target) <= tolerance:
            spec = best[0]
            specs += [spec, {**spec, "method": FA4_TWINS[spec["method"]]}]
        else:
            closest = "no candidate" if best is None else f"closest {best[1]:.1%} ({best[0]})"
            misses.append(f"{group}: {closest}")
    if misses:
        log.warning("matched density %s T=%d (%.1f%%): no match within %.1f points for %s", problem.resolution,
                    tiles, 100 * target, 100 * tolerance, "; ".join(misses))
    if strict and not specs:
        raise ValueError(f"no sparse peer within {100 * tolerance:.1f} points of HilbertA T={tiles} "
                         f"({target:.1%}) on {problem.resolution}: {'; '.join(misses)}")
    return specs
