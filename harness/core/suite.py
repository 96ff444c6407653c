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
    [e2e]           # harness.apps.e2e's settings (checked by the check `load_suite` is given)
    [gate]          # threshold_pct, per-case overrides (glob -> percent), mode = "absolute" | "ratio" | "both"
    [control]       # aa = ["hilberta_t16"]: methods timed twice per problem (A/A twins), aa_limit_pct = 1.5

A method entry is a registry spec (`baselines.registry.resolve`) plus the harness-only key ``layers``.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from baselines import registry
from baselines.problem import DTYPES
from baselines.validate import Invalid, boolean, choice, integer, list_of, number, table
from baselines.validate import text as string
from harness import PROJECT_ROOT
from harness.core.cases import (  # noqa: F401  (re-exported: the suite API is one import)
    GATE_MODES,
    LAYERED_CATEGORIES,
    AAControl,
    CaseSpec,
    GateThresholds,
    MethodEntry,
    MetricScope,
    Suite,
    parse_resolution,
)
from harness.measure.correctness import DEFAULT_TOLERANCES, CorrectnessPolicy
from harness.measure.timing import TimingPolicy

SUITES_DIR = PROJECT_ROOT / "suites"
METRICS = ("timing", "power", "traffic", "e2e", "locality")
# Keys of a method entry that the harness consumes; everything else goes to the registry.
HARNESS_METHOD_KEYS = ("layers",)
# A table the harness passes on to an application (``[e2e]``): name -> check raising ValueError. The caller
# that can run the application gives its check to `load_suite`; without one the table is kept unchecked.
SectionCheck = Callable[[Mapping], object]


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the file, the line and the offending key or value."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else f"{path}: " if path else ""
        super().__init__(where + message)
        self.path, self.line = path, line


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


# ---- validation (checks from the one validator kit, baselines.validate) -------------------------------------

def _resolution(value):
    try:
        parse_resolution(string(value))
    except ValueError as exc:
        raise Invalid(f"{value!r}: {exc}", value) from None
    return value


class _Table:
    """Schema of a TOML table: key -> check (or nested _Table); unknown keys are errors."""

    def __init__(self, **fields):
        self.fields = fields


TIMING = _Table(warmup_ms=number(0), min_samples=integer(1), max_samples=integer(1),
                budget_ms=number(0, strict=True), rounds=integer(1), l2_flush=boolean, cuda_graph=boolean)
CORRECTNESS = _Table(tolerances=_Table(**{dtype: number(0, strict=True) for dtype in DTYPES}),
                     rows=integer(2), all_rows_max_len=integer(1))
SCOPE = {"layers": list_of(integer(0), unique=True), "methods": list_of(string, unique=True)}
SCHEMA = _Table(
    description=string,
    resolutions=list_of(_resolution, unique=True),
    text_tokens=integer(0), batch=integer(1), heads=integer(1), head_dim=integer(1),
    dtype=choice(DTYPES),
    layers=list_of(integer(0), non_empty=True, unique=True),
    methods=list_of(lambda v: v),  # checked against the registry below, entry by entry
    matched_density=list_of(integer(1), unique=True),
    metrics=list_of(choice(METRICS), unique=True),
    timing=TIMING,
    correctness=CORRECTNESS,
    power=_Table(min_window_s=number(0, strict=True), **SCOPE),
    traffic=_Table(**SCOPE),
    locality=_Table(radii=list_of(integer(1), non_empty=True), sample=integer(1)),
    density_sweep=_Table(methods=list_of(table, non_empty=True), layers=SCOPE["layers"]),
    e2e=table,
    gate=_Table(threshold_pct=number(0, strict=True), overrides=table, mode=choice(GATE_MODES)),
    control=_Table(aa=list_of(string, unique=True), aa_limit_pct=number(0, strict=True)),
)


class _Loader:
    def __init__(self, path: Path, text: str, sections: Mapping[str, SectionCheck]):
        self.path, self.locator, self.sections = path, _Locator(text), sections

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
            except Invalid as bad:
                values = [_value_pattern(n) for n in bad.needles]
                raise self.error(section, f"{'.'.join(where)}: {bad}",
                                 [_key_pattern(key), *values], values, [_key_pattern(key)]) from None
        return out

    def method_entry(self, raw, section: tuple[str, ...], group: str) -> MethodEntry:
        if isinstance(raw, str):
            spec, layers = {"method": raw}, None
        elif isinstance(raw, dict) and isinstance(raw.get("method"), str):
            spec = {k: v for k, v in raw.items() if k not in HARNESS_METHOD_KEYS}
            layers = raw.get("layers")
            if layers is not None:
                try:
                    layers = list_of(integer(0), non_empty=True, unique=True)(layers)
                except Invalid as bad:
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

    def check_section(self, name: str, section: dict, check: SectionCheck) -> None:
        """A table an application defines (``[e2e]``): its own check, with our line numbers."""
        try:
            check(section)
        except ValueError as exc:
            message = str(exc)
            named = [key for key in section if re.search(rf"\b{re.escape(key)}\b", message)]
            named.sort(key=lambda key: f"'{key}'" not in message)  # a quoted name is the culprit
            raise self.error((name,), message, *([_key_pattern(key)] for key in named),
                             [_key_pattern(name)]) from None

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
                overrides[pattern] = number(0, strict=True)(pct)
            except Invalid as bad:
                raise self.error(("gate", "overrides"), f"gate.overrides[{pattern!r}]: {bad}",
                                 [_key_pattern(pattern)], [_value_pattern(pattern)]) from None
        try:  # the timing policy's own consistency rules (min_samples <= max_samples, ...)
            TimingPolicy(**values.get("timing", {}))
        except ValueError as exc:
            raise self.error(("timing",), f"timing: {exc}", [_key_pattern("timing")]) from None
        power = values.get("power", {})
        control = values.get("control", {})
        for name in control.get("aa", ()):
            if not any(entry.matches(name) for entry in methods):
                raise self.error(("control",), f"control.aa: {name!r} is not a method of this suite",
                                 [_key_pattern("aa"), _value_pattern(name)], [_key_pattern("aa")])
        for name, check in self.sections.items():
            if name in values:
                self.check_section(name, values[name], check)
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
            gate=GateThresholds(gate.get("threshold_pct", 5.0), MappingProxyType(overrides),
                                gate.get("mode", GateThresholds.mode)),
            control=AAControl(tuple(control.get("aa", ())), control.get("aa_limit_pct", AAControl.limit_pct)),
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


def load_suite(name_or_path: str | Path, sections: Mapping[str, SectionCheck] | None = None) -> Suite:
    """The suite, validated; ``sections`` checks the tables that applications define (``{"e2e": ...}``)."""
    path = suite_path(name_or_path)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        raise SuiteError(f"not valid TOML: {exc}", path, int(line.group(1)) if line else None) from None
    return _Loader(path, text, sections or {}).suite(data)
