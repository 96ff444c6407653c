"""Per-architecture block-size tuning of our Triton kernels: ``python -m harness tune`` (``nox -s tune``).

For every problem (resolution x tiles) of a kernel (`TARGETS`: ``hilberta``, ``sta``) the tuner sweeps the
kernel's config space (`kernels.config.config_space`, narrowed to the knobs the kernel has):

1. each candidate is the registry's method with that launch config (``{"method": "hilberta", "tiles": 16,
   "config": {...}}``), made ready through the case lifecycle (`harness.core.lifecycle`: compiled by its
   first call, checked against the exact reference on a row sample, bf16 tolerance 1e-2); one that does not
   compile or does not fit (Triton's CompilationError / OutOfResources / PTXASError, CUDA out of memory) is
   skipped with the reason, one that is wrong is recorded as incorrect; neither is ever timed, let alone picked;
2. a coarse pass times every correct candidate interleaved (`harness.measure.timing.time_interleaved`) with a few
   samples; 3. the top k, plus the default, are timed again with more samples; the fastest median wins;
4. the winner and the default (what the kernel runs without an entry: `TuneProblem.default`, else
   `kernels.config.DEFAULTS`) are timed against each other, interleaved,
   for the speedup and its CI that go into the stored evidence (if the default wins that head-to-head,
   the default is what gets stored).

Winners are written with `kernels.config.store` into ``kernels/configs/<arch>.json`` under the same
`config_key` the kernel looks up at launch; every candidate becomes a ``kind: "tune"`` row of
``results.json`` (its config as ``params``, with samples, status and reason) so the report can draw the
sweep, and each timing pass's round orders go into ``schedule``/``schedule_orders`` (group
``<problem>/<stage>``, as the runner records its groups): no config is chosen by its slot in the rounds. The default budgets keep a full default tune under 10 minutes on an H100; ``--budget-s`` caps it.
``--dry-run`` lists the problems, the space and the plan without compiling anything.

Modules: `settings` (what a tune is about), `targets` (the kernels), `search` (one problem), `store`
(writing winners), `command` (the whole tune and its command line).
"""

from .command import add_arguments, run, speedup_table, tune
from .search import ProblemOutcome, tune_problem
from .settings import TunePlan, TuneProblem, TuneSettings, TuneTarget
from .store import store_from_results
from .targets import TARGETS

__all__ = ["TARGETS", "ProblemOutcome", "TunePlan", "TuneProblem", "TuneSettings", "TuneTarget", "add_arguments",
           "run", "speedup_table", "store_from_results", "tune", "tune_problem"]
