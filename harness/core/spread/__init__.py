"""Spread one suite run over the GPUs of one host: plan, one worker process per GPU, one merged results.json.

``python -m harness run SUITE --gpus N`` (issue #17). Three modules, one job each:

- `harness.core.spread.plan`: the units of work (problem groups, or with N > 1 their (resolution, layer)
  sub-groups when that balances better), their estimated cost and the deterministic assignment; the rule
  is in that module's docstring;
- `harness.core.spread.run`: the worker processes (``python -m harness.core.spread PAYLOAD``, one per card);
- `harness.core.spread.merge`: the workers' results -> one results.json (``device_index`` on every row,
  per-group fields keyed so no card's overwrite another's, ``env.spread``, "failed" rows for a dead worker).

Nothing about the timing changes but which card ran a unit: a unit's cases are timed interleaved on one card.
"""

from harness.core.spread.merge import Worker, group_keys, merge
from harness.core.spread.plan import E2E_GROUP, Plan, assign, spread_plan, unit_cost_s, units_of
from harness.core.spread.run import (
    NO_MULTICAST_ENV,
    Selection,
    main,
    run_spread,
    run_worker,
    worker_command,
    worker_payload,
    worker_suite,
)

__all__ = ["E2E_GROUP", "NO_MULTICAST_ENV", "Plan", "Selection", "Worker", "assign", "group_keys", "main", "merge",
           "run_spread", "run_worker", "spread_plan", "unit_cost_s", "units_of", "worker_command", "worker_payload",
           "worker_suite"]
