"""The small interface every attention method (HilbertA and each baseline) sits behind.

A `Method` is a registered, fully parametrized attention method (its `name` encodes the parameters).
`Method.prepare(problem, device)` returns a `PreparedAttention`: the callable the harness times, plus
what the harness needs to check it (its exact mask, row by row) and to derive densities, FLOPs and bytes.

Sequence order: every method runs on q, k, v of shape [B, H, L, D] in *its own* token order:
``[text | image tokens in image_order]``. ``image_order[p]`` is the row-major index (row * W + col) of the
image token at image position p (None = row-major). The harness draws random inputs directly in that
order; the end-to-end Flux path permutes the real tokens once per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from baselines.problem import Problem

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MaskRowsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Availability:
    """Whether a method can run here; ``reason`` says why not (or which backend will run)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class KeyOrder:
    """Keys and values in an order a method chooses for one layer, for a caller that writes K and V anyway.

    The end-to-end Flux processor writes K (RoPE's last cast) and V (the text-image concatenation, or V's
    projection) itself, so it can write them in this order at no extra pass; `run` then takes them so.
    ``segments`` are ranges [a, b) of the method's sequence order, laid back to back.
    """

    segments: tuple[tuple[int, int], ...]
    run: AttentionFn  # (q in the sequence order, k and v in this order) -> out in the sequence order

    def arrange(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """A copy of ``x`` (sequence order along ``dim``) in this order."""
        return torch.cat([x.narrow(dim, a, b - a) for a, b in self.segments], dim)


@dataclass
class PreparedAttention:
    """One method made ready for one problem on one device."""

    method: str  # Method.name
    problem: Problem
    backend: str  # what actually runs, e.g. "sdpa-cudnn", "triton-hilberta", "flex-triton"
    run: AttentionFn  # (q, k, v) [B, H, L, D] in this method's order -> out [B, H, L, D]
    image_order: torch.Tensor | None  # int64 [H*W] row-major index per image position; None = row-major
    mask_rows: MaskRowsFn | None  # int64 row indices -> bool [len(rows), L] allowed keys; None = dense
    allowed_pairs: int  # token-level (query, key) pairs per (batch, head) that the mask allows
    computed_pairs: int  # pairs the kernel actually computes (block granularity), per (batch, head)
    setup_ms: dict[str, float] = field(default_factory=dict)  # e.g. {"layout": .., "mask": .., "first_call": ..}
    extra: dict = field(default_factory=dict)  # method-specific facts for the results row (block sizes, ...)
    key_order: KeyOrder | None = None  # offered to callers that write K and V themselves (end to end); `run`
    #                                   takes them as given either way

    @property
    def token_density(self) -> float:
        return self.allowed_pairs / self.problem.seq_len**2

    @property
    def block_density(self) -> float:
        return self.computed_pairs / self.problem.seq_len**2

    @property
    def effective_flops(self) -> float:
        p = self.problem
        return 4.0 * p.batch * p.heads * p.head_dim * self.allowed_pairs

    @property
    def computed_flops(self) -> float:
        p = self.problem
        return 4.0 * p.batch * p.heads * p.head_dim * self.computed_pairs

    def dense_mask(self) -> torch.Tensor | None:
        """The whole [L, L] mask (small problems only); None for dense methods."""
        if self.mask_rows is None:
            return None
        return self.mask_rows(torch.arange(self.problem.seq_len))

    def sequence_coords(self) -> torch.Tensor:
        """int64 [L, 2]: (row, col) on the image grid of each sequence position; (-1, -1) for text."""
        p = self.problem
        order = torch.arange(p.image_tokens) if self.image_order is None else self.image_order.cpu()
        coords = torch.full((p.seq_len, 2), -1, dtype=torch.int64)
        coords[p.text_tokens :, 0] = order // p.width
        coords[p.text_tokens :, 1] = order % p.width
        return coords


@dataclass(frozen=True)
class Method:
    """A registered attention method with all its parameters fixed."""

    name: str  # encodes the parameters, e.g. "hilberta_t16" or "sta_tile8x8_win3x3"
    label: str  # human label for tables and plots
    family: str  # "dense" | "hilberta" | "sliding_tile" | "neighborhood" | "control"
    params: Mapping = field(default_factory=dict)
    dense_reference: bool = False  # a dense baseline that speedups are quoted against
    check_availability: Callable[[torch.device], Availability] = lambda device: Availability(True)
    build: Callable[[Problem, torch.device], PreparedAttention] | None = None

    def availability(self, device: torch.device | str) -> Availability:
        return self.check_availability(torch.device(device))

    def prepare(self, problem: Problem, device: torch.device | str) -> PreparedAttention:
        device = torch.device(device)
        avail = self.availability(device)
        if not avail:
            raise RuntimeError(f"{self.name} cannot run on {device}: {avail.reason}")
        assert self.build is not None, f"method {self.name} has no build function"
        return self.build(problem, device)
