"""What a suite is once loaded: its methods, the cases it plans, and the per-case scopes and gate thresholds.

`harness.core.suite` reads the TOML into these; the runner, the gate and the A/B mode read them. A *case*
(`CaseSpec`) is one method on one problem at one sliding phase; ``Suite.cases()`` is the plan, grouped by
problem. ``parse_resolution`` is the one parser of ``WIDTHxHEIGHT`` pixel sizes (suites, tune, e2e).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

from baselines import registry
from baselines.base import Method
from baselines.problem import Problem
from harness.measure.correctness import CorrectnessPolicy

# Method categories whose mask slides with the layer index: only they run once per phase in `layers`.
LAYERED_CATEGORIES = frozenset({"hilberta", "control"})
# `--quick`: budgets for a look, not for numbers worth quoting.
QUICK_TIMING = MappingProxyType({"warmup_ms": 5.0, "min_samples": 3, "max_samples": 10, "budget_ms": 30.0,
                                 "rounds": 1})
QUICK_POWER_WINDOW_S = 0.25
GATE_MODES = ("absolute", "ratio", "both")  # how the gate compares runs (harness.apps.gate)
AA_SUFFIX = "~aa"  # method / case name suffix of an A/A control twin


# ---- parsed pieces ---------------------------------------------------------------------------------------

def method_matches(name: str, method: Method, spec: Mapping) -> bool:
    """``name`` is the method's full name or its family (``hilberta`` matches hilberta_t4 and hilberta_t16)."""
    return name in (method.name, spec["method"])


@dataclass(frozen=True)
class MethodEntry:
    """One method of a suite: the registry spec, the resolved method and the phases to run it at."""

    spec: Mapping  # {"method": family, **params}, as resolve() accepts it
    method: Method
    layers: tuple[int, ...] | None = None  # None: the suite's layers if the method is layer-dependent
    group: str = "main"  # "main" | "density_sweep" | "matched_density"

    def matches(self, name: str) -> bool:
        return method_matches(name, self.method, self.spec)


@dataclass(frozen=True)
class CaseSpec:
    """One case of the plan: a method on a problem at one sliding phase (``problem.layer``)."""

    problem: Problem
    method: Method
    spec: Mapping
    group: str = "main"
    twin: bool = False  # an A/A control: the same method timed a second time under another name

    @property
    def method_name(self) -> str:
        return self.method.name + (AA_SUFFIX if self.twin else "")

    @property
    def case_id(self) -> str:
        return f"{self.problem.resolution}/{self.method_name}/layer{self.problem.layer}"

    @property
    def aa_of(self) -> str | None:
        """The case id of the original when this case is an A/A twin."""
        return replace(self, twin=False).case_id if self.twin else None

    def to_dict(self) -> dict:
        """JSON-able description, enough for a subprocess to rebuild the case (ncu's target, the A/B worker)."""
        return {"case": self.case_id, "method": dict(self.spec), "method_name": self.method.name,
                "problem": self.problem.to_dict(), "group": self.group, "twin": self.twin}

    @classmethod
    def from_dict(cls, payload: Mapping) -> CaseSpec:
        """The case back from `to_dict` output (``method`` is resolved through the registry)."""
        return cls(problem_from_dict(payload["problem"]), registry.resolve(payload["method"]),
                   MappingProxyType(dict(payload["method"]) if isinstance(payload["method"], Mapping)
                                    else {"method": payload["method"]}),
                   payload.get("group", "main"), payload.get("twin", False))


def problem_from_dict(data: Mapping) -> Problem:
    """A `Problem` from ``Problem.to_dict()`` output (derived keys such as ``seq_len`` are dropped)."""
    names = {f.name for f in fields(Problem)}
    return Problem(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class MetricScope:
    """Which cases an expensive per-case metric (power, traffic) covers: empty means all."""

    layers: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()

    def covers(self, case: CaseSpec) -> bool:
        if self.layers and case.problem.layer not in self.layers:
            return False
        return not self.methods or any(method_matches(name, case.method, case.spec) for name in self.methods)


@dataclass(frozen=True)
class AAControl:
    """``[control]``: methods timed twice in their group (A/A twins) and the limit their ratio must stay in."""

    methods: tuple[str, ...] = ()
    limit_pct: float = 1.5

    def covers(self, case: CaseSpec) -> bool:
        return any(method_matches(name, case.method, case.spec) for name in self.methods)

    def to_dict(self) -> dict:
        return {"aa": list(self.methods), "aa_limit_pct": self.limit_pct}


@dataclass(frozen=True)
class GateThresholds:
    threshold_pct: float = 5.0
    overrides: Mapping[str, float] = field(default_factory=dict)  # case-id glob -> percent
    mode: str = "absolute"  # one of GATE_MODES

    def threshold_for(self, case_id: str) -> float:
        """The first override whose glob matches the case, else the suite threshold."""
        for pattern, pct in self.overrides.items():
            if fnmatch.fnmatchcase(case_id, pattern):
                return pct
        return self.threshold_pct

    def to_dict(self) -> dict:
        return {"threshold_pct": self.threshold_pct, "overrides": dict(self.overrides), "mode": self.mode}


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    resolutions: tuple[str, ...]
    shape: Mapping  # text_tokens, batch, heads, head_dim, dtype: the Problem fields besides the grid
    layers: tuple[int, ...]
    methods: tuple[MethodEntry, ...]
    matched_density: tuple[int, ...]
    metrics: frozenset[str]
    timing: Mapping  # TimingPolicy keyword arguments
    correctness: CorrectnessPolicy
    power_window_s: float
    power: MetricScope
    traffic: MetricScope
    locality: Mapping  # keyword arguments of baselines.locality.locality
    e2e: Mapping | None
    gate: GateThresholds
    control: AAControl = AAControl()
    parts: frozenset[tuple[str, int]] | None = None  # select(parts=...): only these (resolution, layer); None: all

    def problems(self) -> list[Problem]:
        """One problem per resolution, at layer 0."""
        return [parse_resolution(res, **self.shape) for res in self.resolutions]

    def entry_layers(self, entry: MethodEntry) -> tuple[int, ...]:
        if entry.layers is not None:
            return entry.layers
        return self.layers if entry.method.family in LAYERED_CATEGORIES else (0,)

    def entries_for(self, problem: Problem) -> list[MethodEntry]:
        """The suite's methods, plus the sparse peers at HilbertA's density on this problem, if asked."""
        entries = list(self.methods)
        if self.matched_density:
            for tiles in self.matched_density:
                entries += [MethodEntry(MappingProxyType(dict(spec)), registry.resolve(spec), (0,), "matched_density")
                            for spec in registry.matched_density(problem, tiles)]
        return entries

    def cases(self) -> list[CaseSpec]:
        """problems x methods x phases, grouped by problem; a method reached twice is measured once. The A/A
        twins of ``[control] aa`` methods close each problem's group (timed in the same rounds)."""
        cases, seen = [], set()
        for problem in self.problems():
            group = []
            for entry in self.entries_for(problem):
                for layer in self.entry_layers(entry):
                    if self.parts is not None and (problem.resolution, layer) not in self.parts:
                        continue
                    case = CaseSpec(replace(problem, layer=layer), entry.method, entry.spec, entry.group)
                    if case.case_id not in seen:
                        seen.add(case.case_id)
                        group.append(case)
            cases += group + [replace(case, twin=True) for case in group if self.control.covers(case)]
        return cases

    def select(self, methods: Iterable[str] | None = None, resolutions: Iterable[str] | None = None,
               quick: bool = False, parts: Iterable[tuple[str, int]] | None = None) -> Suite:
        """This suite restricted to some methods (names or families; new names are added), resolutions or
        ``(resolution, layer)`` parts of its plan (a spread worker's share; A/A twins follow their originals),
        or with `--quick` budgets. Bad names raise ValueError."""
        suite = self
        if parts is not None:
            parts = frozenset((res, int(layer)) for res, layer in parts)
            held = {res for res, _ in parts}
            suite = replace(suite.select(resolutions=[res for res in suite.resolutions if res in held]
                                         + sorted(held - set(suite.resolutions))), parts=parts)
        if methods is not None:
            suite = replace(suite, methods=tuple(_select_methods(suite.methods, list(methods))),
                            matched_density=())
        if resolutions is not None:
            resolutions = tuple(resolutions)
            for res in resolutions:
                parse_resolution(res, **self.shape)
            suite = replace(suite, resolutions=resolutions)
        if quick:
            suite = replace(suite, timing={**suite.timing, **QUICK_TIMING},
                            power_window_s=min(suite.power_window_s, QUICK_POWER_WINDOW_S))
        return suite

    def describe(self) -> dict:
        """What the results file records about the suite."""
        return {"name": self.name, "path": str(self.path), "description": self.description,
                "metrics": sorted(self.metrics), "timing": dict(self.timing),
                "correctness": self.correctness.to_dict(),
                "gate": self.gate.to_dict(), "control": self.control.to_dict()}


def _select_methods(entries: tuple[MethodEntry, ...], names: list[str]) -> list[MethodEntry]:
    chosen = []
    for name in names:
        matching = [entry for entry in entries if entry.matches(name)]
        if not matching:  # not in the suite: run the registry's method of that name
            method = registry.resolve(name)
            matching = [MethodEntry(MappingProxyType(registry.spec_of(method)), method)]
        chosen += [entry for entry in matching if entry not in chosen]
    return chosen


def parse_pixels(value: str | int) -> tuple[int, int]:
    """``"1536x1024"`` -> (1536, 1024) pixels, width x height; an int ``1024`` -> a square."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"resolution {value!r} is not 'WIDTHxHEIGHT' in pixels, e.g. '1536x1024'")
    return int(match.group(1)), int(match.group(2))


def parse_resolution(value: str | int, **shape) -> Problem:
    """``"1536x1024"`` (pixels, width x height) -> Problem with a 64 x 96 token grid (multiples of 16 px)."""
    return Problem.from_pixels(*parse_pixels(value), **shape)
