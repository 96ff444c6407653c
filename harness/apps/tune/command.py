"""The whole tune and its command line: the dry-run plan, tuning every problem of every kernel into
results.json (and the winners into ``kernels/configs``), the speedup table, ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import torch

from harness.core.lifecycle import default_device
from harness.core.results import RESULTS_NAME, ResultsFile
from harness.measure.envinfo import fingerprint
from kernels import config as kconfig

from .search import ProblemOutcome, tune_problem
from .settings import TunePlan, TuneSettings
from .store import store_from_results, store_meta
from .targets import TARGETS


def plan_lines(kernels: Sequence[str], settings: TuneSettings, plan: TunePlan) -> list[str]:
    """What a tune would do: problems, keys, the config space, and the timing passes."""
    lines = []
    for kernel in kernels:
        target = TARGETS[kernel]
        configs = target.space(settings.head_dim, settings.space)
        lines.append(f"{kernel}: {len(configs)} configs ({settings.space} space); each problem's default (what "
                     f"runs without an entry) is always timed too:")
        lines += [f"  {c.name}" for c in configs]
        for tp in target.problems(settings):
            default = tp.default or kconfig.DEFAULTS[kernel]
            lines.append(f"  problem {tp.label}: L={tp.problem.seq_len}, key {tp.key}, default {default.name}")
    lines.append(f"per problem: check every config, coarse-time all correct ones (<= {plan.coarse['max_samples']} "
                 f"samples), refine the top {plan.top_k} + default (<= {plan.refine['max_samples']}), then winner "
                 f"vs default (<= {plan.final['max_samples']} each); whole tune capped at {plan.budget_s:g} s")
    return lines


def speedup_table(outcomes: list[ProblemOutcome]) -> str:
    """Winner against the default at every problem, as a plain-text table."""
    header = ["problem", "key", "default", "default ms", "tuned", "tuned ms", "speedup [95% CI]", "correct"]
    rows = []
    for o in outcomes:
        correct = f"{sum(c.row['status'] == 'ok' for c in o.candidates)}/{len(o.candidates)}"
        if o.best is None:
            rows.append([o.tune_problem.label, o.tune_problem.key, o.default.config.name, "", o.note, "", "",
                         correct])
            continue
        ev = o.evidence
        ci = ev.get("speedup_ci95")
        speedup = "" if ev["speedup_vs_default"] is None else f"{ev['speedup_vs_default']:.3f}x"
        rows.append([o.tune_problem.label, o.tune_problem.key, o.default.config.name,
                     "" if ev["default_median_ms"] is None else f"{ev['default_median_ms']:.4g}",
                     o.best.config.name, f"{ev['median_ms']:.4g}",
                     speedup + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""), correct])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


def schedule_fields(data: Mapping, outcome: ProblemOutcome) -> dict:
    """The run's ``schedule`` and ``schedule_orders`` with this problem's timing passes added, as the runner
    records its groups: group ``<problem label>/<stage>`` (a row's ``extra.stage`` names the pass its samples
    are from) -> the candidates' case ids, and per round the order of their indices. They show that every
    config was called in every slot of the rounds, so none won by its place."""
    schedule = dict(data.get("schedule") or {})
    cases, orders = dict(schedule.get("cases") or {}), dict(data.get("schedule_orders") or {})
    for stage, timed in outcome.passes.items():
        group = f"{outcome.tune_problem.label}/{stage}"
        cases[group], orders[group] = timed["cases"], timed["orders"]
        schedule.update({key: timed["schedule"][key] for key in ("kind", "l2_flush", "seed")})
    rounds = min((len(group_orders) for group_orders in orders.values()), default=0)
    return {"schedule": {**schedule, "rounds": rounds, "cases": cases}, "schedule_orders": orders}


def tune(kernels: Sequence[str], settings: TuneSettings, plan: TunePlan, device: torch.device, out_dir: Path,
         write: bool) -> tuple[list[ProblemOutcome], Path]:
    """Tune every problem of every kernel; write results.json and (if ``write``) the winners."""
    deadline = time.monotonic() + plan.budget_s
    arch = kconfig.device_arch(device)
    results = ResultsFile(out_dir / RESULTS_NAME, run_id=out_dir.name, suite="tune",
                          policy={"tune": plan.to_dict(), "space": settings.space, "arch": arch})
    env = fingerprint(device)
    results.write_env(env)
    outcomes = []
    for kernel in kernels:
        target = TARGETS[kernel]
        configs = target.space(settings.head_dim, settings.space)
        for tp in target.problems(settings):
            print(f"tune {tp.label} ({tp.key}): {len(configs)} configs", flush=True)
            outcome = tune_problem(target, tp, configs, plan, device, deadline)
            outcomes.append(outcome)
            for candidate in outcome.candidates:
                results.add_case(candidate.row)
                candidate.call = None  # let the problem's inputs and outputs go
            if outcome.passes:
                results.set(**schedule_fields(results.data, outcome))
            if outcome.best is not None and write:
                path = kconfig.store(kernel, arch, tp.key, outcome.best.config, outcome.evidence, store_meta(env))
                print(f"  stored {outcome.best.config.name} for {tp.key} in {path}")
    return outcomes, results.path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", choices=[*TARGETS, "all"], default="hilberta")
    parser.add_argument("--resolutions", default="1024x1024,2048x2048", help="pixels, WIDTHxHEIGHT, comma-separated")
    parser.add_argument("--tiles", default="4,16", help="HilbertA tile counts T, comma-separated")
    parser.add_argument("--sta-tiles", default="8x8", help="STA tile shapes in tokens (rows x cols), comma-separated")
    parser.add_argument("--sta-window", default="3x3", help="STA window in tiles")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--space", choices=["full", "quick"], default="full")
    parser.add_argument("--budget-s", type=float, default=TunePlan.budget_s, help="cap on the whole tune (seconds)")
    parser.add_argument("--out", metavar="DIR", help="results dir (default results/tune-<arch>-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="list the problems, the space and the plan")
    parser.add_argument("--store-from", metavar="DIR", type=Path,
                        help="store the winners of a finished tune run (its results dir) instead of tuning")
    parser.add_argument("--anyway", action="store_true",
                        help="tune on a machine that cannot store configs (CPU, interpreter): results only")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                        help="store the winners in kernels/configs/<arch>.json (default: yes)")


def run(args: argparse.Namespace) -> int:
    kernels = list(TARGETS) if args.kernel == "all" else [args.kernel]
    plan = TunePlan(budget_s=args.budget_s)
    try:
        if args.dry_run:
            print("\n".join(plan_lines(kernels, TuneSettings.from_args(args), plan)))
            return 0
        if args.store_from:
            for path in store_from_results(args.store_from):
                print(f"stored into {path}")
            return 0
        device = default_device()
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            print("error: tune: no CUDA device; tuning needs a GPU (or TRITON_INTERPRET=1 with tiny problems)",
                  file=sys.stderr)
            return 2
        arch = kconfig.device_arch(device)
        if arch == "cpu" and not args.anyway:  # refuse at once: minutes of interpreter timing, nothing kept
            print("error: tune: this machine cannot store tuned configs (arch 'cpu': no CUDA device, or "
                  "TRITON_INTERPRET=1), so a tune here keeps nothing; pass --anyway to tune without storing",
                  file=sys.stderr)
            return 2
        out_dir = Path(args.out or f"results/tune-{arch}-{datetime.now():%Y%m%d-%H%M%S}")
        outcomes, results_path = tune(kernels, TuneSettings.from_args(args), plan, device, out_dir,
                                      args.write and arch != "cpu")
    except ValueError as exc:
        print(f"error: tune: {exc}", file=sys.stderr)
        return 2
    print(speedup_table(outcomes))
    print(f"wrote {results_path}")
    return 0 if all(o.best is not None for o in outcomes) else 1
