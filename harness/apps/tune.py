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
4. the winner and the safe default (`kernels.config.DEFAULTS`) are timed against each other, interleaved,
   for the speedup and its CI that go into the stored evidence (if the default wins that head-to-head,
   the default is what gets stored).

Winners are written with `kernels.config.store` into ``kernels/configs/<arch>.json`` under the same
`config_key` the kernel looks up at launch; every candidate becomes a ``kind: "tune"`` row of
``results.json`` (its config as ``params``, with samples, status and reason) so the report can draw the
sweep. The default budgets keep a full default tune under 10 minutes on an H100; ``--budget-s`` caps it.
``--dry-run`` lists the problems, the space and the plan without compiling anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from baselines.base import Method
from baselines.problem import Problem
from baselines.registry import resolve
from baselines.sliding_tile_kernel import StaGeometry
from harness.core.cases import parse_resolution
from harness.core.lifecycle import make_ready
from harness.core.results import RESULTS_NAME, ResultsFile, load_results
from harness.core.runner import time_group
from harness.core.schema import Row
from harness.measure import stats
from harness.measure.correctness import CorrectnessPolicy
from harness.measure.envinfo import fingerprint
from harness.measure.timing import TimingPolicy
from kernels import config as kconfig
from kernels.config import KernelConfig
from kernels.layout import HilbertLayout


@dataclass(frozen=True)
class TuneProblem:
    """One problem a kernel is tuned for, the key its winner is stored under, and the method of each
    candidate config (the registry's, with that ``config``)."""

    kernel: str
    problem: Problem
    method: str  # the tuned method with its stored config, e.g. "hilberta_t16"
    key: str  # kernels.config.config_key(...), what the kernel looks up at launch
    candidate: Callable[[KernelConfig], Method]
    family: str | None = None  # the registry family of the candidates

    @property
    def label(self) -> str:
        """``2048x2048/hilberta_t16``: the prefix of its rows' case ids."""
        return f"{self.problem.resolution}/{self.method}"


def registry_candidate(spec: Mapping) -> Callable[[KernelConfig], Method]:
    """Candidates of a registry method: ``spec`` with each launch config."""
    return lambda config: resolve({**spec, "config": config.to_dict()})


@dataclass(frozen=True)
class TuneTarget:
    """A tunable kernel: its problems (from the command line) and its config space."""

    name: str
    backend: str
    problems: Callable[[TuneSettings], list[TuneProblem]]
    space: Callable[[int, str], list[KernelConfig]]  # (head_dim, "full" | "quick")


@dataclass(frozen=True)
class TunePlan:
    """How long each pass may take. ``budget_s`` caps the whole tune below 10 minutes (checked between
    candidates; problems it leaves untuned are reported). Measured on an H100 (2026-11-27): the quick space,
    32 HilbertA configs x 2 problems plus 4 STA configs x 2 problems, took 29 s with compilation."""

    coarse: dict = field(default_factory=lambda: {"warmup_ms": 10.0, "min_samples": 3, "max_samples": 10,
                                                  "budget_ms": 60.0, "rounds": 2})
    top_k: int = 4
    refine: dict = field(default_factory=lambda: {"warmup_ms": 25.0, "min_samples": 20, "max_samples": 100,
                                                  "budget_ms": 400.0, "rounds": 5})
    final: dict = field(default_factory=lambda: {"warmup_ms": 50.0, "min_samples": 30, "max_samples": 200,
                                                 "budget_ms": 1000.0, "rounds": 10})
    budget_s: float = 540.0  # whole run; checked between candidates and problems

    def to_dict(self) -> dict:
        return {"coarse": self.coarse, "top_k": self.top_k, "refine": self.refine, "final": self.final,
                "budget_s": self.budget_s}


# ---- the kernels ------------------------------------------------------------------------------------------

def _parse_ints(text: str, what: str) -> list[int]:
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() and int(item) > 0 for item in items):
        raise ValueError(f"{what} {text!r} is not a comma-separated list of positive integers")
    return [int(item) for item in items]


def _parse_pairs(text: str, what: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{what} {item!r} is not AxB with positive integers (e.g. 8x8)")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


@dataclass(frozen=True)
class TuneSettings:
    """What to tune, from the command line, parsed and checked (a bad value raises ValueError naming it)."""

    problems: tuple[Problem, ...]  # one per --resolutions entry (pixels, WIDTHxHEIGHT)
    tiles: tuple[int, ...]  # HilbertA's tile counts
    sta_tiles: tuple[tuple[int, int], ...]
    sta_window: tuple[int, int]
    head_dim: int
    space: str  # "full" | "quick"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TuneSettings:
        shape = {"text_tokens": args.text_tokens, "heads": args.heads, "head_dim": args.head_dim,
                 "dtype": args.dtype}
        return cls(tuple(parse_resolution(text, **shape) for text in args.resolutions.split(",")),
                   tuple(_parse_ints(args.tiles, "--tiles")), tuple(_parse_pairs(args.sta_tiles, "STA tile")),
                   _parse_pairs(args.sta_window, "STA window")[0], args.head_dim, args.space)


def _hilberta_problems(settings: TuneSettings) -> list[TuneProblem]:
    out = []
    for problem in settings.problems:
        for tiles in settings.tiles:
            layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
            key = kconfig.config_key(problem.head_dim, problem.dtype, layout.seq_len, layout.tile_len)
            spec = {"method": "hilberta", "tiles": tiles}
            out.append(TuneProblem("hilberta", problem, resolve(spec).name, key, registry_candidate(spec),
                                   spec["method"]))
    return out


def _hilberta_space(head_dim: int, space: str) -> list[KernelConfig]:
    configs = kconfig.config_space(head_dim)
    if space == "quick":  # the usual pairings of warps with block rows, three stages (the best on an H100)
        configs = [c for c in configs if c.num_stages == 3 and c.num_warps == (4 if c.block_m == 64 else 8)]
    return configs


def _sta_problems(settings: TuneSettings) -> list[TuneProblem]:
    window = settings.sta_window
    out = []
    for problem in settings.problems:
        for tile in settings.sta_tiles:
            geometry = StaGeometry(problem.height, problem.width, problem.text_tokens, tile, window)
            key = kconfig.config_key(problem.head_dim, problem.dtype, geometry.seq_len, tile[0] * tile[1])
            spec = {"method": "sta", "tile": tile, "window": window}
            out.append(TuneProblem("sta", problem, resolve(spec).name, key, registry_candidate(spec), spec["method"]))
    return out


def _sta_space(head_dim: int, space: str) -> list[KernelConfig]:
    """STA's block sizes follow its tile shape: only num_warps and num_stages are knobs."""
    default = kconfig.DEFAULTS["sta"]
    knobs = [(warps, stages) for warps in (4, 8) for stages in (1, 2, 3, 4)]  # one stage: 128-token tiles
    if space == "quick":
        knobs = [(w, s) for w, s in knobs if s in (2, 3)]
    return [replace(default, num_warps=w, num_stages=s) for w, s in knobs]


TARGETS = {
    "hilberta": TuneTarget("hilberta", "triton-hilberta", _hilberta_problems, _hilberta_space),
    "sta": TuneTarget("sta", "triton-sta", _sta_problems, _sta_space),
}


# ---- one problem ------------------------------------------------------------------------------------------

def config_rejections() -> tuple[type[BaseException], ...]:
    """What "this config does not compile, or does not fit on this GPU" looks like."""
    return CompilationError, OutOfResources, PTXASError, torch.OutOfMemoryError


@dataclass
class Candidate:
    config: KernelConfig
    is_default: bool
    row: dict
    call: Callable[[], object] | None = None  # set when the candidate compiled and passed the check


@dataclass
class ProblemOutcome:
    tune_problem: TuneProblem
    candidates: list[Candidate]
    best: Candidate | None = None
    default: Candidate | None = None
    evidence: dict | None = None
    note: str | None = None


def _candidate_row(target: TuneTarget, tp: TuneProblem, config: KernelConfig, is_default: bool) -> dict:
    return Row(kind="tune", case=f"{tp.label}/{config.name}", method=tp.method, label=config.name,
               kernel=target.name, params=config.to_dict(), backend=target.backend, problem=tp.problem.to_dict(),
               extra={"key": tp.key, "default": is_default, "chosen": False, "stage": None}).to_dict()


def _check_candidates(target: TuneTarget, tp: TuneProblem, configs: list[KernelConfig], device: torch.device,
                      deadline: float, inputs) -> list[Candidate]:
    """Make every config's method ready (`harness.core.lifecycle.make_ready`); only correct ones get a call."""
    default = kconfig.DEFAULTS[target.name]
    policy = CorrectnessPolicy()
    rejections = config_rejections()
    candidates = []
    for config in [default, *(c for c in configs if c != default)]:
        candidate = Candidate(config, config == default, _candidate_row(target, tp, config, config == default))
        candidates.append(candidate)
        row = candidate.row
        if time.monotonic() > deadline:
            row.update(status="skipped", reason="tune budget spent before this config was tried")
            continue
        method = tp.candidate(config)
        state = make_ready(method, tp.problem, device, policy, inputs, seed=0, rejections=rejections)
        tune_extra = row["extra"]
        row.update(state.fields, family=tp.family, category=method.family)
        row["extra"] = {**state.fields.get("extra", {}), **tune_extra}
        candidate.call = state.call if state.ready else None
    return candidates


def _time(candidates: list[Candidate], policy: dict, device: torch.device, stage: str) -> None:
    """Time the candidates interleaved (`harness.core.runner.time_group`); their rows get the samples of this
    pass. One that raises while being timed is marked failed and the rest are timed without it."""
    pending = {c.config.name: c for c in candidates if c.call is not None}
    if not pending:
        return
    samples, failures = time_group({name: c.call for name, c in pending.items()}, TimingPolicy(**policy), device)
    for name, c in pending.items():
        if name in failures:
            c.row.update(status="failed", reason=f"while timing: {failures[name]}")
            c.call = None
            continue
        c.row.update(samples_ms=samples[name], **stats.summarize(samples[name]))
        c.row["extra"]["stage"] = stage


def _median(c: Candidate) -> float:
    return c.row["median_ms"]


def _alive(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.call is not None]


def _evidence(best: Candidate, default: Candidate | None, n_timed: int) -> dict:
    """What `kernels.config.store` keeps next to the winner; the speedup is default / winner."""
    evidence = {"median_ms": best.row["median_ms"], "ci95_ms": best.row["ci95_ms"],
                "default_median_ms": default.row["median_ms"] if default else None,
                "speedup_vs_default": None, "candidates": n_timed}
    if default is best:
        evidence["speedup_vs_default"] = 1.0
    elif default is not None:
        ratio, lo, hi = stats.ratio_ci(best.row["samples_ms"], default.row["samples_ms"])
        evidence.update(speedup_vs_default=ratio, speedup_ci95=[lo, hi])
    return evidence


def tune_problem(target: TuneTarget, tp: TuneProblem, configs: list[KernelConfig], plan: TunePlan,
                 device: torch.device, deadline: float) -> ProblemOutcome:
    """Check, coarse-time, refine and pick for one problem; then time the winner against the default."""
    inputs = tp.problem.random_qkv(device, seed=0)
    candidates = _check_candidates(target, tp, configs, device, deadline, inputs)
    outcome = ProblemOutcome(tp, candidates, default=candidates[0])
    _time(candidates, plan.coarse, device, "coarse")
    timed = sorted(_alive(candidates), key=_median)
    top = timed[:plan.top_k] + [c for c in timed[plan.top_k:] if c.is_default]
    _time(top, plan.refine, device, "refine")
    if not _alive(top):
        tried = any(c.row["status"] != "skipped" or "budget" not in c.row["reason"] for c in candidates)
        outcome.note = ("no candidate compiled, passed the correctness check and ran" if tried
                        else "the tune budget was spent before this problem")
        return outcome
    best = min(_alive(top), key=_median)
    default = outcome.default if outcome.default.call is not None else None
    if default is not None and default is not best:
        _time([best, default], plan.final, device, "final")
        if default.call is not None and (best.call is None or _median(default) <= _median(best)):
            best = default  # the head-to-head overrules the refine pass: never store a slower config
    best.row["extra"]["chosen"] = True
    outcome.best, outcome.evidence = best, _evidence(best, default, len(timed))
    return outcome


# ---- the whole tune ---------------------------------------------------------------------------------------

def _meta(env: dict) -> dict:
    versions = env.get("versions") or {}
    return {"gpu": env.get("gpu_name"), "date": datetime.now().date().isoformat(), "torch": versions.get("torch"),
            "triton": versions.get("triton"), "driver": env.get("driver_version")}


def plan_lines(kernels: Sequence[str], settings: TuneSettings, plan: TunePlan) -> list[str]:
    """What a tune would do: problems, keys, the config space, and the timing passes."""
    lines = []
    for kernel in kernels:
        target = TARGETS[kernel]
        configs = target.space(settings.head_dim, settings.space)
        lines.append(f"{kernel}: {len(configs)} configs ({settings.space} space); the default "
                     f"{kconfig.DEFAULTS[kernel].name} is always timed too:")
        lines += [f"  {c.name}" for c in configs]
        for tp in target.problems(settings):
            lines.append(f"  problem {tp.label}: L={tp.problem.seq_len}, key {tp.key}")
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
            if outcome.best is not None and write:
                path = kconfig.store(kernel, arch, tp.key, outcome.best.config, outcome.evidence, _meta(env))
                print(f"  stored {outcome.best.config.name} for {tp.key} in {path}")
    return outcomes, results.path


def _stored_rows(data: dict, path: Path) -> list[dict]:
    """The ok tune rows, each with what storing needs checked (and its median recomputed from its samples);
    ValueError ``"<file>: cases[i].<field>: ..."``."""
    rows = []
    for i, row in enumerate(data["cases"]):
        if not isinstance(row, dict) or row.get("kind") != "tune" or row.get("status") != "ok":
            continue
        where = f"{path}: cases[{i}]"
        extra = row.get("extra")
        if not isinstance(extra, dict) or not isinstance(extra.get("key"), str):
            raise ValueError(f"{where}.extra.key: expected the config key the kernel looks up, got {extra!r:.80}")
        kernel = row.get("kernel")
        if kernel not in TARGETS:
            raise ValueError(f"{where}.kernel: {kernel!r} is not a tunable kernel ({', '.join(TARGETS)})")
        try:
            KernelConfig(**row["params"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}.params: not a kernel config ({exc})") from None
        try:  # the evidence is recomputed from the raw samples: they must be numbers
            median_ms = stats.summarize(row.get("samples_ms") or [])["median_ms"]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}.samples_ms: {exc}") from None
        rows.append({**row, "kernel": kernel, "median_ms": median_ms})
    return rows


def store_from_results(path: Path) -> list[Path]:
    """Store the winners of a finished tune run from its results file alone: for a tune that ran on a
    remote GPU runner whose results came back but whose ``kernels/configs`` did not. The evidence is
    recomputed from the chosen and default rows' raw samples, exactly as `tune` computes it. The run's
    architecture names the file written, so it must look like ``sm90`` (`harness.core.paths.check_arch`)."""
    from harness.core.paths import check_arch

    data = load_results(path)
    arch = (data.get("policy") or {}).get("arch")
    if arch == "cpu":
        raise ValueError(f"{path}: policy.arch: not a GPU tune run (arch 'cpu')")
    check_arch(arch, f"{path}: policy.arch")
    rows = _stored_rows(data, path)
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    written = []
    for best in (r for r in rows if r["extra"].get("chosen")):
        key = best["extra"]["key"]
        default = next((r for r in rows if r["extra"]["key"] == key and r["extra"].get("default")), None)
        evidence = {"median_ms": best["median_ms"], "ci95_ms": best.get("ci95_ms"),
                    "default_median_ms": default["median_ms"] if default else None,
                    "speedup_vs_default": 1.0 if default is best else None,
                    "candidates": sum(r["extra"]["key"] == key for r in rows)}
        if default is not None and default is not best:
            ratio, lo, hi = stats.ratio_ci(best["samples_ms"], default["samples_ms"])
            evidence.update(speedup_vs_default=ratio, speedup_ci95=[lo, hi])
        meta = {**_meta(env), "date": str(data.get("created"))[:10], "from_results": data["run_id"]}
        written.append(kconfig.store(best["kernel"], arch, key, KernelConfig(**best["params"]), evidence, meta))
    return written


# ---- command line -----------------------------------------------------------------------------------------

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
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
