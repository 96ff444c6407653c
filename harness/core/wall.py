"""Where a run's wall time goes: the process's start-up, the run's own stages, and each problem group's
prepare / timing / power / metrics phases, as results ``wall`` (and one console line).

A CI job pays for all of it, not only for the timed calls: on an H200, bench-ci's timed rounds take a few
seconds of a minute; the rest is imports, compiles, correctness checks and the reference. This says which.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import harness


class WallClock:
    """Seconds spent per named stage (``stage("ceilings")``) or per group phase (``stage("prepare",
    group="1024x1024")``); repeated stages add up. ``to_dict`` is results ``wall``."""

    def __init__(self) -> None:
        self.started_s = time.time()
        self.startup_s = self.started_s - harness.PROCESS_START_S  # imports, CUDA, probes: before the run began
        self.stages: dict[str, float] = {}
        self.groups: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(self, name: str, group: str | None = None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            into = self.stages if group is None else self.groups.setdefault(group, {})
            into[f"{name}_s"] = into.get(f"{name}_s", 0.0) + time.perf_counter() - start

    def to_dict(self) -> dict:
        rounded = {key: round(value, 3) for key, value in self.stages.items()}
        groups = {group: {key: round(value, 3) for key, value in phases.items()}
                  for group, phases in self.groups.items()}
        return {"startup_s": round(self.startup_s, 3), **rounded, "groups": groups,
                "total_s": round(time.time() - harness.PROCESS_START_S, 3)}


def wall_line(wall: dict) -> str:
    """``wall 58.6 s: start-up 7.1, ceilings 0.7; 1024x1024 prepare 12.0 timing 2.1; ...`` (one line)."""
    stages = ", ".join(f"{key[:-2]} {value:.1f}" for key, value in wall.items()
                       if key.endswith("_s") and key not in ("startup_s", "total_s"))
    groups = "; ".join(f"{group} " + " ".join(f"{key[:-2]} {value:.1f}" for key, value in phases.items())
                       for group, phases in (wall.get("groups") or {}).items())
    parts = [f"start-up {wall.get('startup_s', 0):.1f}", stages, groups]
    return f"wall {wall.get('total_s', 0):.1f} s: " + "; ".join(part for part in parts if part)
