"""Benchmark suites: declarative TOML files in ``suites/``, validated when loaded.

A suite names the problems (resolutions and the attention shape), the methods, the sliding phases to
time, which metrics to collect and the budgets for each. Every key, method and value is checked at load
time; a mistake raises `SuiteError` naming it and its line in the file::

    description = "Flux.1-dev attention at 2048 px"
    resolutions = ["2048x2048", "2048x1536"]        # pixels, width x height, multiples of 16
    text_tokens = 512
    heads = 24
    head_dim = 128
    dtype = "bfloat16"
    layers = [0, 1, 2, 3]                           # sliding phases of layer-dependent methods
    metrics = ["timing", "power", "traffic"]
    methods = ["sdpa_cudnn", {method = "hilberta", tiles = 16}, {method = "hilberta", tiles = 4, layers = [0]}]
    matched_density = [16]                          # add sparse peers within 2 points of HilbertA T=16

    [timing]        # harness.measure.timing.TimingPolicy
    [correctness]   # tolerances per dtype, rows sampled for big L
    [power]         # min_window_s, layers / methods to measure
    [traffic]       # layers / methods to profile with ncu (one subprocess per case)
    [locality]      # radii, sample (baselines.locality)
    [density_sweep] # methods with list-valued parameters, expanded into every combination
    [e2e]           # passed as is to harness.apps.e2e
    [gate]          # threshold_pct and per-case overrides (glob -> percent)

A method entry is a registry spec (`baselines.registry.resolve`) plus the harness-only key ``layers``.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from baselines.base import Method
from baselines.problem import DTYPES, Problem
from harness.measure.timing import TimingPolicy
from harness import PROJECT_ROOT

SUITES_DIR = PROJECT_ROOT / "suites"
METRICS = ("timing", "power", "traffic", "e2e", "locality")
# Method categories whose mask slides with the layer index: only they run once per phase in `layers`.
LAYERED_CATEGORIES = frozenset({"hilberta", "control"})
# Keys of a method entry that the harness consumes; everything else goes to the registry.
HARNESS_METHOD_KEYS = ("layers",)
DEFAULT_TOLERANCES = MappingProxyType({"bfloat16": 1e-2, "float16": 5e-3, "float32": 1e-4})
# `--quick`: budgets for a look, not for numbers worth quoting.
QUICK_TIMING = MappingProxyType({"warmup_ms": 5.0, "min_samples": 3, "max_samples": 10, "budget_ms": 30.0,
                                 "rounds": 1})
QUICK_POWER_WINDOW_S = 0.25


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the file, the line and the offending key or value."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else f"{path}: " if path else ""
        super().__init__(where + message)
        self.path, self.line = path, line


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

    @property
    def case_id(self) -> str:
        return f"{self.problem.resolution}/{self.method.name}/layer{self.problem.layer}"

    def to_dict(self) -> dict:
        """JSON-able description, enough for a subprocess to rebuild the case (harness.measure.traffic)."""
        return {"case": self.case_id, "method": dict(self.spec), "method_name": self.method.name,
                "problem": self.problem.to_dict(), "group": self.group}


@dataclass(frozen=True)
class CorrectnessPolicy:
    tolerances: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TOLERANCES)  # rel. error, per dtype
    rows: int = 512  # query rows checked when L is larger than all_rows_max_len
    all_rows_max_len: int = 4096  # check every row up to this sequence length

    def tolerance(self, dtype: str) -> float:
        return self.tolerances[dtype]


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
class GateThresholds:
    threshold_pct: float = 5.0
    overrides: Mapping[str, float] = field(default_factory=dict)  # case-id glob -> percent

    def threshold_for(self, case_id: str) -> float:
        """The first override whose glob matches the case, else the suite threshold."""
        for pattern, pct in self.overrides.items():
            if fnmatch.fnmatchcase(case_id, pattern):
                return pct
        return self.threshold_pct

    def to_dict(self) -> dict:
        return {"threshold_pct": self.threshold_pct, "overrides": dict(self.overrides)}


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
            from baselines import registry

            for tiles in self.matched_density:
                entries += [MethodEntry(MappingProxyType(dict(spec)), registry.resolve(spec), (0,), "matched_density")
                            for spec in registry.matched_density(problem, tiles)]
        return entries

    def cases(self) -> list[CaseSpec]:
        """problems x methods x phases, grouped by problem; a method reached twice is measured once."""
        cases, seen = [], set()
        for problem in self.problems():
            for entry in self.entries_for(problem):
                for layer in self.entry_layers(entry):
                    case = CaseSpec(replace(problem, layer=layer), entry.method, entry.spec, entry.group)
                    if case.case_id not in seen:
                        seen.add(case.case_id)
                        cases.append(case)
        return cases

    def select(self, methods: Iterable[str] | None = None, resolutions: Iterable[str] | None = None,
               quick: bool = False) -> Suite:
        """This suite restricted to some methods (names or families; new names are added) or resolutions,
        or with `--quick` budgets. Bad names raise ValueError."""
        suite = self
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
                "correctness": {"tolerances": dict(self.correctness.tolerances), "rows": self.correctness.rows,
                                "all_rows_max_len": self.correctness.all_rows_max_len},
                "gate": self.gate.to_dict()}


def _select_methods(entries: tuple[MethodEntry, ...], names: list[str]) -> list[MethodEntry]:
    from baselines import registry

    chosen = []
    for name in names:
        matching = [entry for entry in entries if entry.matches(name)]
        if not matching:  # not in the suite: run the registry's method of that name
            method = registry.resolve(name)
            matching = [MethodEntry(MappingProxyType(registry.spec_of(method)), method)]
        chosen += [entry for entry in matching if entry not in chosen]
    return chosen


def parse_resolution(text: str, **shape) -> Problem:
    """``"1536x1024"`` (pixels, width x height) -> Problem with a 64 x 96 token grid."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"resolution {text!r} is not 'WIDTHxHEIGHT' in pixels, e.g. '1536x1024'")
    return Problem.from_pixels(int(match.group(1)), int(match.group(2)), **shape)


# ---- finding where a key or value sits in the TOML text ---------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(?:#.*)?$")


def _assignment(key: str) -> str:
    return rf"(?<![\w-])[\"']?{re.escape(key)}[\"']?\s*="


def _key_pattern(key: str) -> re.Pattern:
    """``key =`` (bare, quoted or dotted) or a table header ``[...key]``."""
    return re.compile(rf"{_assignment(key)}|^\s*\[\[?\s*(?:[\w.\"'-]+\.)?{re.escape(key)}\s*[\].]")


def _value_pattern(value) -> re.Pattern:
    if isinstance(value, str):
        return re.compile(rf"[\"']{re.escape(value)}[\"']")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.compile(rf"(?<![\w.]){re.escape(text)}(?![\w.])")


def _assignment_pattern(key: str, value) -> re.Pattern:
    """``key = value`` as TOML writes a scalar (tells two entries of one method apart); else the key."""
    if isinstance(value, (str, bool, int, float)):
        return re.compile(_assignment(key) + r"\s*" + _value_pattern(value).pattern)
    return _key_pattern(key)


class _Locator:
    """Line numbers of keys and values in the suite text (tomllib keeps no positions)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = [(i, m.group(1).replace(" ", "")) for i, line in enumerate(self.lines)
                        if (m := _HEADER.match(line))]

    def _span(self, section: tuple[str, ...]) -> tuple[int, int]:
        """Lines of the deepest table header that is a prefix of ``section`` (top level: before any header)."""
        for depth in range(len(section), 0, -1):
            dotted = ".".join(section[:depth])
            for n, (start, name) in enumerate(self.headers):
                if name == dotted:
                    end = self.headers[n + 1][0] if n + 1 < len(self.headers) else len(self.lines)
                    return start, end
        return 0, self.headers[0][0] if self.headers else len(self.lines)

    def line(self, section: tuple[str, ...], *candidates: list[re.Pattern]) -> int:
        """1-based line of the first candidate whose patterns all match one line: in the section, else
        anywhere; candidates go from precise to rough. Falls back to the section's first line."""
        start, end = self._span(section)
        for patterns in filter(None, candidates):
            for lo, hi in ((start, end), (0, len(self.lines))):
                for i in range(lo, hi):
                    if all(p.search(self.lines[i]) for p in patterns):
                        return i + 1
        return start + 1


# ---- validation ---------------------------------------------------------------------------------------

class _Bad(Exception):
    """A bad value; ``needles`` are values whose text locates it more precisely than its key."""

    def __init__(self, message: str, *needles):
        super().__init__(message)
        self.needles = needles


Check = Callable[[object], object]


def _integer(minimum: int) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(f"expected an integer >= {minimum}, got {value!r}")
        return value
    return check


def _number(minimum: float, strict: bool = False) -> Check:
    def check(value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (strict and value == minimum):
            raise _Bad(f"expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
        return float(value)
    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _text(value):
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {value!r}")
    return value


def _choice(choices: Iterable[str]) -> Check:
    choices = tuple(choices)

    def check(value):
        if value not in choices:
            raise _Bad(f"{value!r} is not one of {', '.join(choices)}", value)
        return value
    return check


def _list(item: Check, non_empty: bool = False, unique: bool = False) -> Check:
    def check(value):
        if not isinstance(value, list):
            raise _Bad(f"expected a list, got {value!r}")
        if non_empty and not value:
            raise _Bad("expected a non-empty list")
        items = tuple(item(v) for v in value)
        if unique and len(set(items)) != len(items):
            raise _Bad(f"duplicate entries in {value!r}")
        return items
    return check


def _resolution(value):
    try:
        parse_resolution(_text(value))
    except ValueError as exc:
        raise _Bad(f"{value!r}: {exc}", value) from None
    return value


def _opaque_table(value):
    if not isinstance(value, dict):
        raise _Bad(f"expected a table, got {value!r}")
    return value


class _Table:
    """Schema of a TOML table: key -> check (or nested _Table); unknown keys are errors."""

    def __init__(self, **fields):
        self.fields = fields


TIMING = _Table(warmup_ms=_number(0), min_samples=_integer(1), max_samples=_integer(1),
                budget_ms=_number(0, strict=True), rounds=_integer(1), l2_flush=_boolean, cuda_graph=_boolean)
CORRECTNESS = _Table(tolerances=_Table(**{dtype: _number(0, strict=True) for dtype in DTYPES}),
                     rows=_integer(2), all_rows_max_len=_integer(1))
SCOPE = {"layers": _list(_integer(0), unique=True), "methods": _list(_text, unique=True)}
SCHEMA = _Table(
    description=_text,
    resolutions=_list(_resolution, unique=True),
    text_tokens=_integer(0), batch=_integer(1), heads=_integer(1), head_dim=_integer(1),
    dtype=_choice(DTYPES),
    layers=_list(_integer(0), non_empty=True, unique=True),
    methods=_list(lambda v: v),  # checked against the registry below, entry by entry
    matched_density=_list(_integer(1), unique=True),
    metrics=_list(_choice(METRICS), unique=True),
    timing=TIMING,
    correctness=CORRECTNESS,
    power=_Table(min_window_s=_number(0, strict=True), **SCOPE),
    traffic=_Table(**SCOPE),
    locality=_Table(radii=_list(_integer(1), non_empty=True), sample=_integer(1)),
    density_sweep=_Table(methods=_list(_opaque_table, non_empty=True), layers=SCOPE["layers"]),
    e2e=_opaque_table,
    gate=_Table(threshold_pct=_number(0, strict=True), overrides=_opaque_table),
)


class _Loader:
    def __init__(self, path: Path, text: str):
        self.path, self.locator = path, _Locator(text)

    def error(self, section: tuple[str, ...], message: str, *candidates: list[re.Pattern]) -> SuiteError:
        """SuiteError at the first line matching a candidate inside table ``section``."""
        return SuiteError(message, self.path, self.locator.line(section, *candidates))

    def table(self, schema: _Table, data: dict, section: tuple[str, ...] = ()) -> dict:
        if not isinstance(data, dict):
            raise self.error(section[:-1], f"{'.'.join(section)} must be a table, got {data!r}",
                             [_key_pattern(section[-1])])
        out = {}
        for key, value in data.items():
            where = (*section, key)
            if key not in schema.fields:
                raise self.error(section, f"unknown key {'.'.join(where)!r}; valid keys here: "
                                          f"{', '.join(schema.fields)}", [_key_pattern(key)])
            check = schema.fields[key]
            if isinstance(check, _Table):
                out[key] = self.table(check, value, where)
                continue
            try:
                out[key] = check(value)
            except _Bad as bad:
                values = [_value_pattern(n) for n in bad.needles]
                raise self.error(section, f"{'.'.join(where)}: {bad}",
                                 [_key_pattern(key), *values], values, [_key_pattern(key)]) from None
        return out

    def method_entry(self, raw, section: tuple[str, ...], group: str) -> MethodEntry:
        from baselines import registry

        if isinstance(raw, str):
            spec, layers = {"method": raw}, None
        elif isinstance(raw, dict) and isinstance(raw.get("method"), str):
            spec = {k: v for k, v in raw.items() if k not in HARNESS_METHOD_KEYS}
            layers = raw.get("layers")
            if layers is not None:
                try:
                    layers = _list(_integer(0), non_empty=True, unique=True)(layers)
                except _Bad as bad:
                    raise self.error(section, f"layers of method {raw['method']!r}: {bad}",
                                     [_value_pattern(raw["method"]), _key_pattern("layers")],
                                     [_key_pattern(section[-1])]) from None
        else:
            raise self.error(section, f"a method is a name or a table with a 'method' key, got {raw!r}",
                             [_key_pattern(section[-1])])
        try:
            method = registry.resolve(spec)
        except ValueError as exc:
            name, params = _value_pattern(spec["method"]), [k for k in spec if k != "method"]
            raise self.error(section, f"{'.'.join(section)}: {exc}",
                             [name, *(_assignment_pattern(k, spec[k]) for k in params)],
                             [name, *map(_key_pattern, params)], [name]) from None
        return MethodEntry(MappingProxyType(dict(spec)), method, layers, group)

    def sweep_entries(self, raw: dict, layers: tuple[int, ...]) -> list[MethodEntry]:
        """``{method="hilberta", tiles=[4, 8, 16]}`` -> one entry per combination of list values."""
        section = ("density_sweep", "methods")
        keys = [k for k in raw if k != "method"]
        grids = [raw[k] if isinstance(raw[k], list) else [raw[k]] for k in keys]
        return [self.method_entry({"method": raw.get("method"), **dict(zip(keys, combo)), "layers": list(layers)},
                                  section, "density_sweep")
                for combo in itertools.product(*grids)]

    def check_e2e(self, section: dict) -> None:
        """The [e2e] table is harness.apps.e2e's to define; its own validation, with our line numbers."""
        try:
            from harness.apps.e2e import E2ESettings
        except ImportError:  # the runner reports e2e as unavailable
            return
        try:
            E2ESettings.from_section(section)
        except ValueError as exc:
            message = str(exc)
            named = [key for key in section if re.search(rf"\b{re.escape(key)}\b", message)]
            named.sort(key=lambda key: f"'{key}'" not in message)  # a quoted name is the culprit
            raise self.error(("e2e",), message, *([_key_pattern(key)] for key in named),
                             [_key_pattern("e2e")]) from None

    def suite(self, data: dict) -> Suite:
        values = self.table(SCHEMA, data)
        methods = [self.method_entry(raw, ("methods",), "main") for raw in values.get("methods", ())]
        sweep = values.get("density_sweep", {})
        names = {entry.method.name for entry in methods}
        for raw in sweep.get("methods", ()):
            for entry in self.sweep_entries(raw, sweep.get("layers", (0,))):
                if entry.method.name not in names:
                    names.add(entry.method.name)
                    methods.append(entry)
        resolutions = values.get("resolutions", ())
        if bool(resolutions) != bool(methods):
            present, missing = ("resolutions", "methods") if resolutions else ("methods", "resolutions")
            raise self.error((), f"the suite has {present} but no {missing}", [_key_pattern(present)])
        if not resolutions and "e2e" not in values:
            raise SuiteError("a suite needs resolutions and methods, or an [e2e] table", self.path, 1)
        shape = {key: values[key] for key in ("text_tokens", "batch", "heads", "head_dim", "dtype") if key in values}
        correctness = values.get("correctness", {})
        tolerances = {**DEFAULT_TOLERANCES, **correctness.get("tolerances", {})}
        gate = values.get("gate", {})
        overrides = {}
        for pattern, pct in gate.get("overrides", {}).items():
            try:
                overrides[pattern] = _number(0, strict=True)(pct)
            except _Bad as bad:
                raise self.error(("gate", "overrides"), f"gate.overrides[{pattern!r}]: {bad}",
                                 [_key_pattern(pattern)], [_value_pattern(pattern)]) from None
        try:  # the timing policy's own consistency rules (min_samples <= max_samples, ...)
            TimingPolicy(**values.get("timing", {}))
        except ValueError as exc:
            raise self.error(("timing",), f"timing: {exc}", [_key_pattern("timing")]) from None
        power = values.get("power", {})
        if "e2e" in values:
            self.check_e2e(values["e2e"])
        metrics = frozenset(values.get("metrics", ("timing",)))
        if "e2e" in metrics and "e2e" not in values:
            raise self.error((), "metric 'e2e' needs an [e2e] table", [_key_pattern("metrics")])
        if "e2e" in values:  # an [e2e] table is a request to run it
            metrics |= {"e2e"}
        return Suite(
            name=self.path.stem, path=self.path, description=values.get("description", ""),
            resolutions=tuple(resolutions), shape=MappingProxyType(shape),
            layers=values.get("layers", (0,)), methods=tuple(methods),
            matched_density=values.get("matched_density", ()), metrics=metrics,
            timing=MappingProxyType(values.get("timing", {})),
            correctness=CorrectnessPolicy(MappingProxyType(tolerances),
                                          correctness.get("rows", CorrectnessPolicy.rows),
                                          correctness.get("all_rows_max_len", CorrectnessPolicy.all_rows_max_len)),
            power_window_s=power.get("min_window_s", 1.0),
            power=MetricScope(power.get("layers", ()), power.get("methods", ())),
            traffic=MetricScope(**values.get("traffic", {})),
            locality=MappingProxyType(dict(values.get("locality", {}))),
            e2e=MappingProxyType(values["e2e"]) if "e2e" in values else None,
            gate=GateThresholds(gate.get("threshold_pct", 5.0), MappingProxyType(overrides)),
        )


def suite_path(name_or_path: str | Path) -> Path:
    """A suite name (``bench-2048``) is ``suites/<name>.toml``; anything with a suffix or slash is a path."""
    text = str(name_or_path)
    path = Path(text) if text.endswith(".toml") or "/" in text else SUITES_DIR / f"{text}.toml"
    if not path.is_file():
        raise SuiteError(f"no suite {text!r}; shipped suites: {', '.join(available_suites())}")
    return path


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    path = suite_path(name_or_path)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        raise SuiteError(f"not valid TOML: {exc}", path, int(line.group(1)) if line else None) from None
    return _Loader(path, text).suite(data)
