"""Spread one suite run over the GPUs of one host: plan, one worker per GPU, one merged results.json.

``python -m harness run SUITE --gpus N`` (issue #17). Six modules, one job each:

- `harness.core.spread.plan`: the units of work (problem groups, or with N > 1 their (resolution, layer)
  sub-groups when that balances better), their estimated cost and the deterministic assignment; the rule
  is in that module's docstring;
- `harness.core.spread.pool`: the workers, one per card, started (or found warm) before the parent imports
  torch, and handed their work at once;
- `harness.core.spread.run`: what a worker runs (`serve_run`: its own plan, its units) and the parent's side
  (hand out, check the input while they run, wait, merge);
- `harness.core.spread.merge`: the workers' results -> one results.json (``device_index`` on every row,
  per-group fields keyed so no card's overwrite another's, ``env.spread``, "failed" rows for a dead worker);
- `harness.core.spread.warm`: warm workers, a resident process per card that paid its start-up once
  (``python -m harness serve``), and what keeps them honest: the protocol and the fingerprint;
- `harness.core.spread.serve`: the ``serve`` command and the warm worker itself.

Nothing about the timing changes but which card ran a unit: a unit's cases are timed interleaved on one card.
"""

import importlib

# Loaded on first use (PEP 562): `harness.core.spread.pool` runs in the parent before torch is imported, so
# importing this package must not import the rest (merge, plan and run import torch through the suite).
_MODULE_OF = {"pool": ["NO_MULTICAST_ENV", "Pool", "Selection", "Worker", "card_env", "start_workers", "worker_command",
                       "worker_payload"],
              "warm": ["CardBusy", "connect", "fingerprint", "ping", "stale_reason"],
              "serve": ["serve_command"],
              "merge": ["group_keys", "merge_workers"],
              "plan": ["E2E_GROUP", "Plan", "assign", "spread_plan", "unit_cost_s", "units_of"],
              "run": ["main", "run_spread", "run_worker", "warm_up", "warm_up_line", "worker_suite", "worker_units",
                      "serve_run"]}
_LAZY = {name: f"{__name__}.{module}" for module, names in _MODULE_OF.items() for name in names}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
