"""One results directory as the report sees it: the raw results dict (read by `harness.core.results`), its tidy
rows table and the env fingerprint fields the page quotes (written by `harness.measure.envinfo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.core.results import load_results
from reports.rows import dig, rows_frame


@dataclass
class Run:
    """A loaded run: ``results`` as read, ``frame`` one row per case (see `reports.rows`)."""

    directory: Path  # the folder holding results.json
    results: dict
    frame: pd.DataFrame = field(repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> Run:
        results = load_results(directory)
        directory = Path(directory)
        if directory.is_file():
            directory = directory.parent
        return cls(directory, results, rows_frame(results["cases"]))

    @property
    def env(self) -> dict:
        env = self.results.get("env")
        return env if isinstance(env, dict) else {}

    def _env_text(self, *path: str) -> str | None:
        value = dig(self.env, path)
        return None if value in (None, "") else str(value)

    @property
    def card(self) -> str | None:
        return self._env_text("gpu_name")

    @property
    def commit(self) -> str | None:
        return self._env_text("git", "commit")

    @property
    def dirty(self) -> bool | None:
        dirty = dig(self.env, ("git", "dirty"))
        return dirty if isinstance(dirty, bool) else None

    @property
    def name(self) -> str:
        return str(self.results.get("run_id") or self.directory.name)
