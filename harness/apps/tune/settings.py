"""What a tune is about: the problems and candidate configs of a tunable kernel, its timing plan, and the
command-line settings they are made from (parsed and checked)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from baselines.base import Method
from baselines.problem import Problem
from baselines.registry import resolve
from harness.core.cases import parse_resolution
from kernels.config import KernelConfig


@dataclass(frozen=True)
class TuneProblem:
    """One problem a kernel is tuned for, the key its winner is stored under, and the method of each
    candidate config (the registry's, with that ``config``)."""

    kernel: str
    problem: Problem
    method: str  # the tuned method with its stored config, e.g. "hilberta_t16"
    key: str  # kernels.config.config_key(...), what the kernel looks up at launch
    candidate: Callable[[KernelConfig], Method]
    family: str | None = None  # the registry family of the candidates
    default: KernelConfig | None = None  # what the kernel runs without an entry (None: kernels.config.DEFAULTS)

    @property
    def label(self) -> str:
        """``2048x2048/hilberta_t16``: the prefix of its rows' case ids."""
        return f"{self.problem.resolution}/{self.method}"


def registry_candidate(spec: Mapping) -> Callable[[KernelConfig], Method]:
    """Candidates of a registry method: ``spec`` with each launch config."""
    return lambda config: resolve({**spec, "config": config.to_dict()})


@dataclass(frozen=True)
class TuneTarget:
    """A tunable kernel: its problems (from the command line) and its config space."""

    name: str
    backend: str
    problems: Callable[[TuneSettings], list[TuneProblem]]
    space: Callable[[int, str], list[KernelConfig]]  # (head_dim, "full" | "quick")


@dataclass(frozen=True)
class TunePlan:
    """How long each pass may take. ``budget_s`` caps the whole tune below 10 minutes (checked between
    candidates; problems it leaves untuned are reported). Measured on an H100 (2026-11-27): the quick space,
    32 HilbertA configs x 2 problems plus 4 STA configs x 2 problems, took 29 s with compilation."""

    coarse: dict = field(default_factory=lambda: {"warmup_ms": 10.0, "min_samples": 3, "max_samples": 10,
                                                  "budget_ms": 60.0, "rounds": 2})
    top_k: int = 4
    refine: dict = field(default_factory=lambda: {"warmup_ms": 25.0, "min_samples": 20, "max_samples": 100,
                                                  "budget_ms": 400.0, "rounds": 5})
    final: dict = field(default_factory=lambda: {"warmup_ms": 50.0, "min_samples": 30, "max_samples": 200,
                                                 "budget_ms": 1000.0, "rounds": 10})
    budget_s: float = 540.0  # whole run; checked between candidates and problems

    def to_dict(self) -> dict:
        return {"coarse": self.coarse, "top_k": self.top_k, "refine": self.refine, "final": self.final,
                "budget_s": self.budget_s}


def _parse_ints(text: str, what: str) -> list[int]:
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() and int(item) > 0 for item in items):
        raise ValueError(f"{what} {text!r} is not a comma-separated list of positive integers")
    return [int(item) for item in items]


def _parse_pairs(text: str, what: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{what} {item!r} is not AxB with positive integers (e.g. 8x8)")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


@dataclass(frozen=True)
class TuneSettings:
    """What to tune, from the command line, parsed and checked (a bad value raises ValueError naming it)."""

    problems: tuple[Problem, ...]  # one per --resolutions entry (pixels, WIDTHxHEIGHT)
    tiles: tuple[int, ...]  # HilbertA's tile counts
    sta_tiles: tuple[tuple[int, int], ...]
    sta_window: tuple[int, int]
    head_dim: int
    space: str  # "full" | "quick"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TuneSettings:
        shape = {"text_tokens": args.text_tokens, "heads": args.heads, "head_dim": args.head_dim,
                 "dtype": args.dtype}
        return cls(tuple(parse_resolution(text, **shape) for text in args.resolutions.split(",")),
                   tuple(_parse_ints(args.tiles, "--tiles")), tuple(_parse_pairs(args.sta_tiles, "STA tile")),
                   _parse_pairs(args.sta_window, "STA window")[0], args.head_dim, args.space)
