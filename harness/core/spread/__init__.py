"""Spread one suite run over the GPUs of one host: plan, one worker process per GPU, one merged results.json.

``python -m harness run SUITE --gpus N`` (issue #17). Four modules, one job each:

- `harness.core.spread.plan`: the units of work (problem groups, or with N > 1 their (resolution, layer)
  sub-groups when that balances better), their estimated cost and the deterministic assignment; the rule
  is in that module's docstring;
- `harness.core.spread.pool`: the worker processes, one per card, started before the parent imports torch;
- `harness.core.spread.run`: what they run (``python -m harness.core.spread SELECTION DEVICE``) and the
  parent's side (start, plan, dispatch, wait, merge);
- `harness.core.spread.merge`: the workers' results -> one results.json (``device_index`` on every row,
  per-group fields keyed so no card's overwrite another's, ``env.spread``, "failed" rows for a dead worker).

Nothing about the timing changes but which card ran a unit: a unit's cases are timed interleaved on one card.
"""

import importlib

# Loaded on first use (PEP 562): `harness.core.spread.pool` runs in the parent before torch is imported, so
# importing this package must not import the rest (merge, plan and run import torch through the suite).
_MODULE_OF = {"pool": ["NO_MULTICAST_ENV", "Pool", "Selection", "Worker", "card_env", "start_workers", "worker_command"],
              "merge": ["group_keys", "merge_workers"],
              "plan": ["E2E_GROUP", "Plan", "assign", "spread_plan", "unit_cost_s", "units_of"],
              "run": ["main", "run_spread", "run_worker", "warm_up", "warm_up_line", "worker_payload", "worker_suite"]}
_LAZY = {name: f"{__name__}.{module}" for module, names in _MODULE_OF.items() for name in names}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
