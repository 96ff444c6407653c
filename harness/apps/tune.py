"""Per-architecture block-size tuning of our Triton kernels: ``python -m harness tune`` (``nox -s tune``).

For every problem (resolution x tiles) of a kernel (`TARGETS`: ``hilberta``, ``sta``) the tuner sweeps the
kernel's config space (`kernels.config.config_space`, narrowed to the knobs the kernel has):

1. each candidate is compiled and checked against the exact reference on a row sample
   (`harness.measure.correctness.check_correctness`, bf16 tolerance 1e-2); one that does not compile or does not
   fit (Triton's CompilationError / OutOfResources / PTXASError, CUDA out of memory) is skipped with the
   reason, one that is wrong is recorded as incorrect; neither is ever timed, let alone picked;
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path

import torch

from baselines.base import PreparedAttention
from baselines.problem import Problem
from kernels import config as kconfig
from kernels.config import KernelConfig


@dataclass(frozen=True)
class TuneProblem:
    """One problem a kernel is tuned for, the key its winner is stored under, and how to make one
    candidate config ready to check and time."""

    kernel: str
    problem: Problem
    method: str  # a method-like name, e.g. "hilberta_t16"
    key: str  # kernels.config.config_key(...), what the kernel looks up at launch
    prepare: Callable[[KernelConfig], PreparedAttention]

    @property
    def label(self) -> str:
        """``2048x2048/hilberta_t16``: the prefix of its rows' case ids."""
        return f"{self.problem.resolution}/{self.method}"


@dataclass(frozen=True)
class TuneTarget:
    """A tunable kernel: its problems (from the command line) and its config space."""

    name: str
    backend: str
    problems: Callable[[argparse.Namespace], list[TuneProblem]]
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


def _problems(args: argparse.Namespace) -> list[Problem]:
    """One problem per ``--resolutions`` entry (pixels, WIDTHxHEIGHT), in the shape the arguments give."""
    from harness.core.suite import parse_resolution

    shape = {"text_tokens": args.text_tokens, "heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype}
    return [parse_resolution(text, **shape) for text in args.resolutions.split(",")]


def _hilberta_problems(args: argparse.Namespace) -> list[TuneProblem]:
    from kernels.layout import HilbertLayout

    out = []
    for problem in _problems(args):
        for tiles in _parse_ints(args.tiles, "--tiles"):
            layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
            key = kconfig.config_key(problem.head_dim, problem.dtype, layout.seq_len, layout.tile_len)
            out.append(TuneProblem("hilberta", problem, f"hilberta_t{tiles}", key,
                                   partial(_hilberta_candidate, problem, layout)))
    return out


def _hilberta_space(head_dim: int, space: str) -> list[KernelConfig]:
    configs = kconfig.config_space(head_dim)
    if space == "quick":  # the usual pairings of warps with block rows, three stages (the best on an H100)
        configs = [c for c in configs if c.num_stages == 3 and c.num_warps == (4 if c.block_m == 64 else 8)]
    return configs


def _hilberta_candidate(problem: Problem, layout, config: KernelConfig) -> PreparedAttention:
    from kernels.hilbert_attention import hilbert_attention, hilbert_attention_computed_pairs

    return PreparedAttention(
        method=f"hilberta_t{layout.num_tiles}", problem=problem, backend="triton-hilberta",
        run=lambda q, k, v: hilbert_attention(q, k, v, layout, layer=0, config=config),
        image_order=layout.permutation(), mask_rows=lambda rows: layout.mask_rows(rows, 0),
        allowed_pairs=layout.allowed_pairs(0), computed_pairs=hilbert_attention_computed_pairs(layout, 0, config),
        extra={"shared_tokens": layout.shared_tokens})


def _sta_problems(args: argparse.Namespace) -> list[TuneProblem]:
    from baselines.sliding_tile_kernel import StaGeometry

    window = _parse_pairs(args.sta_window, "STA window")[0]
    out = []
    for problem in _problems(args):
        for tile in _parse_pairs(args.sta_tiles, "STA tile"):
            geometry = StaGeometry(problem.height, problem.width, problem.text_tokens, tile, window)
            key = kconfig.config_key(problem.head_dim, problem.dtype, geometry.seq_len, tile[0] * tile[1])
            method = f"sta_tile{tile[0]}x{tile[1]}_win{window[0]}x{window[1]}"
            out.append(TuneProblem("sta", problem, method, key, partial(_sta_candidate, problem, method, geometry)))
    return out


def _sta_space(head_dim: int, space: str) -> list[KernelConfig]:
    """STA's block sizes follow its tile shape: only num_warps and num_stages are knobs."""
    default = kconfig.DEFAULTS["sta"]
    knobs = [(warps, stages) for warps in (4, 8) for stages in (1, 2, 3, 4)]  # one stage: 128-token tiles
    if space == "quick":
        knobs = [(w, s) for w, s in knobs if s in (2, 3)]
    return [replace(default, num_warps=w, num_stages=s) for w, s in knobs]


@lru_cache(maxsize=8)
def _sta_mask(geometry):
    """The exact mask of one STA problem, built once for all its candidates."""
    from baselines.window_masks import sliding_tile_mask

    return sliding_tile_mask(geometry.height, geometry.width, geometry.text_tokens, geometry.tile, geometry.window)


def _sta_candidate(problem: Problem, method: str, geometry, config: KernelConfig) -> PreparedAttention:
    from baselines.sliding_tile_kernel import sta_attention
    from baselines.window_masks import window_allowed_pairs

    g = geometry
    return PreparedAttention(
        method=method, problem=problem, backend="triton-sta",
        run=lambda q, k, v: sta_attention(q, k, v, g.height, g.width, g.text_tokens, g.tile, g.window,
                                          config=config),
        image_order=None, mask_rows=_sta_mask(g).rows,
        allowed_pairs=window_allowed_pairs(g.height, g.width, g.text_tokens, g.tile, g.window),
        computed_pairs=g.computed_pairs(), extra={"shared_tokens": g.text_tokens})


TARGETS = {
    "hilberta": TuneTarget("hilberta", "triton-hilberta", _hilberta_problems, _hilberta_space),
    "sta": TuneTarget("sta", "triton-sta", _sta_problems, _sta_space),
}


# ---- one problem ------------------------------------------------------------------------------------------

def config_rejections() -> tuple[type[BaseException], ...]:
    """What "this config does not compile, or does not fit on this GPU" looks like."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    return CompilationError, OutOfResources, PTXASError, torch.OutOfMemoryError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
    return {"kind": "tune", "case": f"{tp.label}/{config.name}", "method": tp.method,
            "label": config.name, "family": target.name, "params": config.to_dict(), "backend": target.backend,
            "problem": tp.problem.to_dict(), "status": "ok", "reason": None,
            "extra": {"key": tp.key, "default": is_default, "chosen": False, "stage": None}}


def _check_candidates(target: TuneTarget, tp: TuneProblem, configs: list[KernelConfig], device: torch.device,
                      deadline: float, inputs) -> list[Candidate]:
    """Compile and check every config; only correct ones get a call to time."""
    from harness.measure.correctness import check_correctness
    from harness.core.suite import CorrectnessPolicy

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
        try:
            prepared = tp.prepare(config)
            row["correctness"] = check_correctness(prepared, policy, device, seed=0)
        except rejections as exc:
            row.update(status="skipped", reason=f"does not compile or fit: {_first_line(exc)}")
            continue
        except Exception as exc:  # one bad config is a row with a reason, never the end of the tune
            row.update(status="failed", reason=_first_line(exc))
            continue
        check = row["correctness"]
        if not check["passed"]:
            row.update(status="incorrect", reason=f"relative error {check['rel_err']:.3g} > tolerance "
                                                  f"{check['tol']:.3g}")
            continue
        candidate.call = partial(prepared.run, *inputs)
    return candidates


def _time(candidates: list[Candidate], policy: dict, device: torch.device, stage: str) -> None:
    """Time the candidates interleaved; their rows get the samples of this pass. One that raises while
    being timed is marked failed and the pass is repeated without it."""
    from harness.measure import stats
    from harness.measure.timing import TimedFnError, TimingPolicy, time_interleaved

    pending = {c.config.name: c for c in candidates if c.call is not None}
    while pending:
        try:
            samples = time_interleaved({name: c.call for name, c in pending.items()}, TimingPolicy(**policy),
                                       device)
        except TimedFnError as exc:
            bad = pending.pop(exc.name)
            bad.row.update(status="failed", reason=f"while timing: {exc}")
            bad.call = None
            continue
        for name, c in pending.items():
            c.row.update(samples_ms=samples[name], **stats.summarize(samples[name]))
            c.row["extra"]["stage"] = stage
        return


def _median(c: Candidate) -> float:
    return c.row["median_ms"]


def _alive(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.call is not None]


def _evidence(best: Candidate, default: Candidate | None, n_timed: int) -> dict:
    """What `kernels.config.store` keeps next to the winner; the speedup is default / winner."""
    from harness.measure import stats

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


def plan_lines(kernels: Sequence[str], args: argparse.Namespace, plan: TunePlan) -> list[str]:
    """What a tune would do: problems, keys, the config space, and the timing passes."""
    lines = []
    for kernel in kernels:
        target = TARGETS[kernel]
        configs = target.space(args.head_dim, args.space)
        lines.append(f"{kernel}: {len(configs)} configs ({args.space} space); the default "
                     f"{kconfig.DEFAULTS[kernel].name} is always timed too:")
        lines += [f"  {c.name}" for c in configs]
        for tp in target.problems(args):
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


def tune(kernels: Sequence[str], args: argparse.Namespace, plan: TunePlan, device: torch.device, out_dir: Path,
         write: bool) -> tuple[list[ProblemOutcome], Path]:
    """Tune every problem of every kernel; write results.json and (if ``write``) the winners."""
    from harness.measure.envinfo import fingerprint
    from harness.core.results import RESULTS_NAME, ResultsFile

    deadline = time.monotonic() + plan.budget_s
    arch = kconfig.device_arch(device)
    results = ResultsFile(out_dir / RESULTS_NAME, run_id=out_dir.name, suite="tune",
                          policy={"tune": plan.to_dict(), "space": args.space, "arch": arch})
    env = fingerprint(device)
    results.write_env(env)
    outcomes = []
    for kernel in kernels:
        target = TARGETS[kernel]
        configs = target.space(args.head_dim, args.space)
        for tp in target.problems(args):
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


def store_from_results(path: Path) -> list[Path]:
    """Store the winners of a finished tune run from its results file alone: for a tune that ran on a
    remote GPU runner whose results came back but whose ``kernels/configs`` did not. The evidence is
    recomputed from the chosen and default rows' raw samples, exactly as `tune` computes it."""
    from harness.measure import stats
    from harness.core.results import load_results

    data = load_results(path)
    rows = [r for r in data["cases"] if r.get("kind") == "tune" and r.get("status") == "ok"]
    arch = (data.get("policy") or {}).get("arch")
    if not arch or arch == "cpu":
        raise ValueError(f"{path}: not a GPU tune run (arch {arch!r})")
    written = []
    for best in (r for r in rows if r["extra"].get("chosen")):
        key = best["extra"]["key"]
        default = next((r for r in rows if r["extra"].get("key") == key and r["extra"].get("default")), None)
        evidence = {"median_ms": best["median_ms"], "ci95_ms": best["ci95_ms"],
                    "default_median_ms": default["median_ms"] if default else None,
                    "speedup_vs_default": 1.0 if default is best else None,
                    "candidates": sum(r["extra"].get("key") == key for r in rows)}
        if default is not None and default is not best:
            ratio, lo, hi = stats.ratio_ci(best["samples_ms"], default["samples_ms"])
            evidence.update(speedup_vs_default=ratio, speedup_ci95=[lo, hi])
        meta = {**_meta(data["env"]), "date": data["created"][:10], "from_results": data["run_id"]}
        written.append(kconfig.store(best["family"], arch, key, KernelConfig(**best["params"]), evidence, meta))
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
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                        help="store the winners in kernels/configs/<arch>.json (default: yes)")


def run(args: argparse.Namespace) -> int:
    kernels = list(TARGETS) if args.kernel == "all" else [args.kernel]
    plan = TunePlan(budget_s=args.budget_s)
    try:
        if args.dry_run:
            print("\n".join(plan_lines(kernels, args, plan)))
            return 0
        if args.store_from:
            for path in store_from_results(args.store_from):
                print(f"stored into {path}")
            return 0
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            print("tune: no CUDA device; tuning needs a GPU (or TRITON_INTERPRET=1 with tiny problems)")
            return 2
        arch = kconfig.device_arch(device)
        out_dir = Path(args.out or f"results/tune-{arch}-{datetime.now():%Y%m%d-%H%M%S}")
        write = args.write and arch != "cpu"
        if args.write and not write:
            print("tune: not storing configs for 'cpu': the interpreter always runs the CPU default")
        outcomes, results_path = tune(kernels, args, plan, device, out_dir, write)
    except ValueError as exc:
        print(f"tune: {exc}")
        return 2
    print(speedup_table(outcomes))
    print(f"wrote {results_path}")
    return 0 if all(o.best is not None for o in outcomes) else 1
