"""The results directory: ``results.json`` (`harness.core.schema`), ``env.json`` and the pytest-benchmark export.

`ResultsFile` rewrites ``results.json`` atomically (temp file + ``os.replace``) after every case, so an
interrupted run always leaves a complete, loadable file holding the cases finished so far. Every row is
validated against the schema when it is added, and the whole file when it is read (`load_results`, which
also upgrades files of an older schema; it also reads ``results.json.gz``, the gzip of that file, which is how
the committed samples are stored). Values that are not finite (an infinite relative error, say) are
written as ``null``: the file is strict JSON.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from harness.core.schema import SCHEMA_VERSION, SchemaError, upgrade, validate_results, validate_row

RESULTS_NAME = "results.json"
COMPRESSED_RESULTS_NAME = RESULTS_NAME + ".gz"  # gzip of results.json: read wherever a results file is
ENV_NAME = "env.json"
PYTEST_BENCHMARK_NAME = "pytest-benchmark.json"


class ResultsError(ValueError):
    """A results file that is missing, unreadable, of an unreadable schema version or not fitting the schema."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(_finite(data), f, indent=1, allow_nan=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave the old file and no temp file behind
        tmp.unlink(missing_ok=True)
        raise


class ResultsFile:
    """``results.json`` of one run, rewritten after every change."""

    def __init__(self, path: str | Path, run_id: str, suite: str, policy: dict | None = None,
                 extra: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = {"schema": SCHEMA_VERSION, "run_id": run_id, "suite": suite, "created": utc_now(),
                     "env": {}, "policy": policy or {}, **(extra or {}), "cases": []}
        validate_results(self.data)
        self._flush()

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def cases(self) -> list[dict]:
        return self.data["cases"]

    def _flush(self) -> None:
        write_json_atomic(self.path, self.data)

    def write_env(self, env: dict) -> None:
        """Record the environment fingerprint in results.json and, on its own, in env.json."""
        self.data["env"] = env
        write_json_atomic(self.directory / ENV_NAME, env)
        self._flush()

    def add_case(self, row: dict) -> None:
        """Append one case row (valid under the schema; its ``case`` id must be new in this run)."""
        validate_row(row)
        if any(existing["case"] == row["case"] for existing in self.cases):
            raise ValueError(f"case {row['case']!r} is already in {self.path}")
        self.cases.append(row)
        self._flush()

    def update_cases(self, rows: list[dict]) -> None:
        """Replace rows already added (matched by ``case`` id), e.g. once derived metrics are known."""
        index = {row["case"]: i for i, row in enumerate(self.cases)}
        for row in rows:
            validate_row(row)
            self.cases[index[row["case"]]] = row
        self._flush()

    def set(self, **fields) -> None:
        """Set top-level fields (``finished``, ``complete``, ...); refused unless the schema has them."""
        validate_results({**self.data, **fields, "cases": []})
        self.data.update(fields)
        self._flush()


def load_results(path_or_dir: str | Path) -> dict:
    """A results dict of the current schema from ``results.json`` or the run directory holding it: an older
    schema is upgraded (`harness.core.schema.upgrade`), the current one validated; `ResultsError` names the
    file and the first bad field."""
    path = Path(path_or_dir)
    if path.is_dir():
        plain, compressed = path / RESULTS_NAME, path / COMPRESSED_RESULTS_NAME
        path = compressed if compressed.is_file() and not plain.is_file() else plain
    if not path.is_file():
        raise ResultsError(f"no results file at {path}")
    try:
        data = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise ResultsError(f"{path} is not valid JSON{' (gzip)' if path.suffix == '.gz' else ''}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ResultsError(f"{path} has no 'cases' list")
    try:
        return validate_results(upgrade(data)) if data.get("schema") == SCHEMA_VERSION else upgrade(data)
    except SchemaError as exc:
        raise ResultsError(f"{path}: {exc}") from None


# ---- pytest-benchmark export -------------------------------------------------------------------------------

def _timed_rows(results: dict) -> Iterator[dict]:
    for row in results["cases"]:
        if row.get("samples_ms"):
            yield row


def _machine_info(env: dict) -> dict:
    """pytest-benchmark's machine_info keys, filled from our fingerprint where it has them."""
    info = {"node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
            "python_version": platform.python_version(), "python_compiler": platform.python_compiler(),
            "release": platform.release(), "system": platform.system(), "cpu": {}}
    return {**info, "gpu": env}


def _commit_info(env: dict) -> dict:
    git = env.get("git", {}) if isinstance(env.get("git"), dict) else {}
    return {"id": git.get("commit") or env.get("git_commit") or "unknown",
            "dirty": bool(git.get("dirty", env.get("git_dirty", False))),
            "project": "hilberta-bench", "branch": git.get("branch")}


def export_pytest_benchmark(results: dict, path: str | Path) -> Path:
    """Write the timed cases in pytest-benchmark's JSON format (times in seconds), for its tooling
    (``pytest-benchmark compare``) and dashboards that read it."""
    # pytest-benchmark is a dependency (same statistics as its tools), imported here because only the
    # export needs it and it costs ~0.1 s to import; results.py is also read by the report
    from pytest_benchmark import __version__ as pb_version
    from pytest_benchmark.stats import Stats

    benchmarks = []
    for row in _timed_rows(results):
        stats = Stats()
        for ms in row["samples_ms"]:
            stats.update(ms / 1e3)
        problem = row.get("problem", {})
        benchmarks.append({
            "group": problem.get("resolution"),
            "name": row["case"],
            "fullname": f"{results.get('suite')}::{row['case']}",
            "params": {"method": row.get("method"), **problem},
            "param": row["case"],
            "extra_info": {key: row.get(key) for key in ("status", "backend", "density", "tflops", "derived",
                                                          "correctness") if row.get(key) is not None},
            "options": {"timer": results.get("policy", {}).get("timer", "harness.measure.timing"), "min_rounds": None,
                        "max_time": None, "min_time": None, "warmup": True, "disable_gc": False},
            "stats": {**stats.as_dict(), "data": list(stats.data), "iterations": 1},
        })
    env = results.get("env", {})
    data = {"machine_info": _machine_info(env), "commit_info": _commit_info(env), "benchmarks": benchmarks,
            "datetime": results.get("created") or utc_now(), "version": pb_version}
    path = Path(path)
    write_json_atomic(path, data)
    return path
