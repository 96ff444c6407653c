"""Every value that becomes part of a file path, checked; and the atomic claim of a results directory.

Values read from results files, the command line or the environment (an architecture such as ``sm90``, a
run id, a suite name, a GPU slug) end up as folder or file names. Each is checked against a strict
pattern first, so a results file whose ``policy.arch`` is ``../../x`` cannot write outside the project
(`PathComponentError`, a ValueError naming the field).

A run claims its results directory before any case runs: ``results.json`` is created with ``O_EXCL``, so
of two runs started into the same directory at once exactly one gets it and the other stops with one line
(`RunDirError`); nothing of the first is lost. Run ids carry a random suffix, so two runs started in the
same second get different ids, and a default directory that is taken anyway is never reused.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

RESULTS_ROOT = Path("results")
# What each kind of path component may look like: the name of the field, its pattern, an example.
COMPONENTS = {
    "arch": (re.compile(r"sm\d{2,4}"), "sm90"),
    "run_id": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"), "20261127-101500-smoke-3f9a"),
    "slug": (re.compile(r"[a-z0-9][a-z0-9._-]{0,127}"), "nvidia-h100-80gb-hbm3"),
}
CLAIM_ATTEMPTS = 8  # fresh run ids tried for a default directory before giving up


class PathComponentError(ValueError):
    """A value that would become a path component but is not a plain, safe name."""


class RunDirError(ValueError):
    """A results directory that cannot be used: taken by another run, or not creatable or writable."""


def check_component(value, kind: str, field: str) -> str:
    """``value`` when it is a safe ``kind`` (`COMPONENTS`) name, else PathComponentError naming ``field``."""
    pattern, example = COMPONENTS[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise PathComponentError(f"{field}: {value!r} is not a valid {kind.replace('_', ' ')} "
                                 f"(expected a name like {example!r})")
    return value


def check_arch(value, field: str = "arch") -> str:
    """A CUDA architecture as the config store names it: ``sm`` then digits (``sm90``)."""
    return check_component(value, "arch", field)


def slugify(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; '' when nothing usable is left."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:128]


def new_run_id(suite_name: str, now: datetime | None = None) -> str:
    """``20261127-101500-bench-2048-3f9a``: UTC start time, suite, and a random suffix (unique within a
    second)."""
    now = now or datetime.now(UTC)
    suite = slugify(suite_name) or "run"
    return check_component(f"{now:%Y%m%d-%H%M%S}-{suite}-{secrets.token_hex(2)}", "run_id", "run id")


def _claim(out_dir: Path, run_id: str) -> bool:
    """Create ``out_dir`` and, exclusively, its results.json; False when another run holds it already."""
    from harness.core.results import RESULTS_NAME, SCHEMA_VERSION, utc_now

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / RESULTS_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        if out_dir.is_dir():
            return False
        raise RunDirError(f"results directory {out_dir} is not usable: it exists and is not a directory") from None
    except OSError as exc:
        raise RunDirError(f"results directory {out_dir} is not usable: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out_dir) else "")
                          ) from None
    with os.fdopen(fd, "w") as f:  # a placeholder the run replaces at once: loadable, and says it is not done
        json.dump({"schema": SCHEMA_VERSION, "run_id": run_id, "created": utc_now(), "complete": False,
                   "env": {}, "policy": {}, "cases": []}, f)
    return True


def claim_run_dir(out_dir: str | os.PathLike | None, suite_name: str, root: Path | None = None) -> tuple[Path, str]:
    """Claim a results directory for a new run of ``suite_name``: ``(directory, run_id)``.

    ``out_dir`` None: ``<root>/<run-id>`` (root: ``results/``), with a fresh run id until one is free.
    A given ``out_dir`` that already holds a run, or cannot be created or written, raises RunDirError.
    """
    if out_dir is not None:
        run_id = new_run_id(suite_name)
        if not _claim(Path(out_dir), run_id):
            from harness.core.results import RESULTS_NAME

            raise RunDirError(f"{out_dir} already holds a run ({RESULTS_NAME}); choose another --out")
        return Path(out_dir), run_id
    root = RESULTS_ROOT if root is None else Path(root)
    for _ in range(CLAIM_ATTEMPTS):
        run_id = new_run_id(suite_name)
        if _claim(root / run_id, run_id):
            return root / run_id, run_id
    raise RunDirError(f"no free results directory under {root} after {CLAIM_ATTEMPTS} run ids; pass --out")
