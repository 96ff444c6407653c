"""The environment fingerprint, timing policy and schedule of the run, each field under a human name
(`reports.names`), with units (a tool's error output is never shown as a value), and where the run's wall time
went (results ``wall``: start-up, stages, each problem group's phases; a --gpus run's per card)."""

from __future__ import annotations

from reports.blocks import Definitions, Section
from reports.formatting import fmt_duration
from reports.names import display_value, human_name
from reports.rows import flatten
from reports.run import Run

ID, TITLE = "environment", "Environment"


def _definitions(mapping: object, caption: str) -> Definitions | None:
    if not isinstance(mapping, dict) or not mapping:
        return None
    return Definitions([(human_name(key), display_value(key, value)) for key, value in flatten(mapping).items()],
                       caption=caption)


def _seconds(phases: dict) -> str:
    return ", ".join(f"{key.removesuffix('_s').replace('_', '-')} {fmt_duration(value * 1e3)}"
                     for key, value in phases.items() if isinstance(value, (int, float)))


def _wall(run: Run) -> Definitions | None:
    """One line for the run's (or the parent's) stages, one per problem group, one per card of a --gpus run."""
    wall = run.results.get("wall")
    if not isinstance(wall, dict) or not wall:
        return None
    items = [("run", _seconds(wall))]
    items += [(group, _seconds(phases)) for group, phases in (wall.get("groups") or {}).items()]
    for card in ((run.env or {}).get("spread") or {}).get("cards", ()):
        if isinstance(card.get("wall"), dict):
            span = {key: card[key] for key in ("started_s", "exited_s") if isinstance(card.get(key), (int, float))}
            parent = f" (on the parent's clock: {_seconds(span)})" if span else ""
            warm = card.get("warm") if isinstance(card.get("warm"), dict) else None
            worker = (f"; a warm worker (pid {warm.get('pid')}, up {fmt_duration(1e3 * warm.get('up_s', 0))}, "
                      f"{warm.get('runs', 0)} run(s) before this)" if warm else "")
            items.append((f"GPU {card.get('index')}", _seconds(card["wall"]) + parent + worker))
            items += [(f"GPU {card.get('index')}: {group}", _seconds(phases))
                      for group, phases in (card["wall"].get("groups") or {}).items()]
    return Definitions(items, caption="Where the run's wall time went (start-up counts from the process's start)")


def section(run: Run) -> Section:
    blocks = [_wall(run), _definitions(run.env, "Environment fingerprint"),
              _definitions(run.results.get("policy"), "Timing policy"),
              _definitions(run.results.get("schedule"), "Schedule")]
    blocks = [block for block in blocks if block is not None]
    if not blocks:
        return Section.empty(ID, TITLE, "The results carry no environment fingerprint and no timing policy.")
    return Section(ID, TITLE, blocks)
