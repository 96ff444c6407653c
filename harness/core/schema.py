"""The results schema (version 2): one typed record per result row, the run-level fields, their validation,
and the reader that upgrades version-1 files.

Every writer (runner, tune, A/B worker, e2e) builds its rows as a `Row` and writes ``Row.to_dict()``;
`harness.core.results` validates every row on write and the whole file on read (`validate_results`), and
a bad value raises `SchemaError` naming the case and the field. The JSON keys are those of
docs/contracts.md "results.json"; missing data is an absent key or ``null``, never a made-up number.

Meanings fixed here: ``family`` is the registry family (`baselines.registry.Family.name`, e.g.
``hilberta_flex``), ``category`` its kind of method (``Method.family``: dense, hilberta, sliding_tile,
neighborhood, control), ``kernel`` the tuned kernel of a ``tune`` row (``hilberta`` | ``sta``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields

SCHEMA_VERSION = 2
KINDS = ("kernel", "e2e", "tune", "locality")
STATUSES = ("ok", "incorrect", "failed", "skipped", "unavailable")
ALWAYS_WRITTEN = ("kind", "case", "status", "reason")  # present (maybe null) in every row


class SchemaError(ValueError):
    """A row or a results file that does not fit the schema; the message names the case and the field."""


@dataclass
class Row:
    """One result row. Only ``kind`` and ``case`` are required; everything else may be absent."""

    kind: str
    case: str  # unique in the run: resolution/method/variant
    status: str = "ok"
    reason: str | None = None
    method: str | None = None
    label: str | None = None
    family: str | None = None  # registry family name
    category: str | None = None  # Method.family: dense | hilberta | sliding_tile | neighborhood | control
    kernel: str | None = None  # tune rows: the tuned kernel
    dense_reference: bool | None = None
    params: dict | None = None
    spec: dict | None = None  # the registry spec that rebuilds the method
    group: str | None = None  # main | density_sweep | matched_density
    backend: str | None = None
    problem: dict | None = None  # Problem.to_dict()
    correctness: dict | None = None
    samples_ms: list[float | None] | None = None
    samples_t_s: list[float | None] | None = None  # start of each sample, s since the run's timing began
    samples_round: list[int] | None = None  # the round of each sample
    median_ms: float | None = None
    mean_ms: float | None = None
    iqr_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    cv: float | None = None
    ci95_ms: list[float | None] | None = None
    ci_method: str | None = None
    n_samples: int | None = None
    setup_ms: dict | None = None
    density: dict | None = None
    flops: dict | None = None
    tflops: dict | None = None
    bytes: dict | None = None
    derived: dict | None = None
    power: dict | None = None
    traffic: dict | None = None
    clocks: dict | None = None
    conditions: dict | None = None  # NVML samples during this case's own timed calls
    locality: dict | None = None
    e2e: dict | None = None
    extra: dict | None = None
    aa_of: str | None = None  # case id of the original when this row is an A/A control twin
    device_index: int | None = None

    def to_dict(self) -> dict:
        """The JSON row: the always-written keys, then every field that has a value."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in ALWAYS_WRITTEN or getattr(self, f.name) is not None}


@dataclass
class Run:
    """The run-level fields of ``results.json`` (the rows are in ``cases``)."""

    schema: int
    run_id: str
    suite: str | None = None
    created: str | None = None
    env: dict | None = None
    policy: dict | None = None
    cases: list[dict] | None = None
    finished: str | None = None
    complete: bool | None = None
    device: str | None = None
    suite_config: dict | None = None
    revision: dict | None = None  # A/B runs: which git revision this side is
    stored_reference: dict | None = None  # gate references: where the run came from
    schedule: dict | None = None  # {"kind", "rounds", "l2_flush", "seed"}
    schedule_orders: dict | None = None  # {group: [[case index, ...] per round]}
    aa_pairs: list[dict] | None = None
    ceilings: dict | None = None  # {"gemm_tflops", "copy_gbps", "sm_clock_mhz", "how"}
    wall: dict | None = None  # seconds: {"startup_s", "<stage>_s", "groups": {group: {"<phase>_s"}}, "total_s"}
    upgrade: dict | None = None  # set by the reader of an older schema: {"from", "problems"}


# ---- type checks generated from the annotations ------------------------------------------------------------

def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:  # JSON has one number type; booleans are not numbers
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _describe(hint) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "null")


ROW_TYPES = typing.get_type_hints(Row)
RUN_TYPES = typing.get_type_hints(Run)
CHOICES = {"kind": KINDS, "status": STATUSES}


def row_problems(row) -> list[str]:
    """What is wrong with one row: one line per field (empty when the row is valid)."""
    if not isinstance(row, dict):
        return [f"a row must be an object, got {type(row).__name__}"]
    name = f"case {row.get('case')!r}"
    out = [f"{name}: required field {key!r} is missing" for key in ("kind", "case") if key not in row]
    for key, value in row.items():
        if key not in ROW_TYPES:
            out.append(f"{name}: unknown field {key!r} (the schema's fields: docs/contracts.md)")
        elif not _matches(value, ROW_TYPES[key]):
            out.append(f"{name}: field {key!r} is {value!r}, expected {_describe(ROW_TYPES[key])}")
        elif key in CHOICES and value not in CHOICES[key]:
            out.append(f"{name}: field {key!r} is {value!r}, not one of {', '.join(CHOICES[key])}")
    return out


def validate_row(row: dict) -> dict:
    """``row`` if it fits the schema, else `SchemaError` naming its first bad field."""
    problems = row_problems(row)
    if problems:
        raise SchemaError(problems[0])
    return row


def results_problems(data) -> list[str]:
    """What is wrong with a whole results dict (run fields, rows, duplicate case ids)."""
    if not isinstance(data, dict):
        return ["the results file must hold a JSON object"]
    out = [f"run field {key!r} is missing" for key in ("schema", "run_id", "cases") if key not in data]
    for key, value in data.items():
        if key not in RUN_TYPES:
            out.append(f"unknown run field {key!r}")
        elif not _matches(value, RUN_TYPES[key]):
            out.append(f"run field {key!r} is {value!r:.80}, expected {_describe(RUN_TYPES[key])}")
    seen: set = set()
    for row in data.get("cases") or ():
        out += row_problems(row)
        case = row.get("case") if isinstance(row, dict) else None
        if case in seen:
            out.append(f"case {case!r} appears twice")
        seen.add(case)
    return out


def validate_results(data: dict) -> dict:
    problems = results_problems(data)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SchemaError(problems[0] + more)
    return data


# ---- reading older files -----------------------------------------------------------------------------------

def _upgrade_row_1(row: dict) -> dict:
    """Schema 1 -> 2: "family" was the category (kernel, e2e rows) or the tuned kernel (tune rows)."""
    if not isinstance(row, dict) or "family" not in row:
        return row
    row = dict(row)
    if row.get("kind") == "tune":
        row["kernel"] = row["family"]  # the tuned kernels are registry families of the same name
    else:
        row["category"] = row.pop("family")
        spec = row.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("method"), str):
            row["family"] = spec["method"]
    return row


UPGRADES = {1: lambda data: {**data, "schema": 2, "cases": [_upgrade_row_1(r) for r in data["cases"]]}}


def upgrade(data: dict) -> dict:
    """A results dict of any readable schema as schema `SCHEMA_VERSION`. Files of an older schema were never
    validated: what does not fit is listed under ``upgrade.problems`` instead of refusing the old data."""
    version = data.get("schema")
    if version == SCHEMA_VERSION:
        return data
    if version not in UPGRADES:
        readable = ", ".join(map(str, sorted([*UPGRADES, SCHEMA_VERSION])))
        raise SchemaError(f"results schema {version!r}; this harness reads schemas {readable}"
                          + (" (re-run the suite with this version)" if version is not None else ""))
    start = version
    while version != SCHEMA_VERSION:
        data = UPGRADES[version](data)
        version = data["schema"]
    data["upgrade"] = {"from": start, "problems": []}
    data["upgrade"]["problems"] = results_problems(data)
    return data
