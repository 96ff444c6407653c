"""HilbertA's kernel benchmark: speed per sliding phase against dense SDPA and FlexAttention, and where
the time goes.

    python -m harness.apps.kernelbench --resolutions 1024x1024,2048x2048 --tiles 16 --out DIR

For each resolution (Flux shapes: B=1, 24 heads, D=128, bf16, 512 text tokens, centre 1/4) it checks every
timed callable against the exact reference, then times them interleaved (harness.measure.timing): HilbertA at each
sliding phase, FlexAttention with the same mask, SDPA forced to FlashAttention-2 and to cuDNN. It also
times the kernel's anatomy in the same rounds: the shared-row blocks alone, the local-row blocks alone, and
the same kernel run dense (one tile, no centre), whose rate is the ceiling this kernel design reaches on
this card. Writes ``bench_hilberta.json`` and ``bench_hilberta.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from baselines.problem import Problem
from baselines.registry import resolve
from harness.measure.correctness import check_correctness
from harness.measure.envinfo import fingerprint
from harness.measure.stats import summarize
from harness.core.suite import CorrectnessPolicy
from harness.measure.timing import TimingPolicy, time_interleaved
from kernels.hilbert_attention import block_table, default_config, launch
from kernels.layout import HilbertLayout

DENSE = ("sdpa_flash", "sdpa_cudnn")


def _prepare(spec, problem: Problem, device: torch.device, policy: CorrectnessPolicy):
    method = resolve(spec)
    avail = method.availability(device)
    if not avail:
        return method, None, {"status": "unavailable", "reason": avail.reason}
    prepared = method.prepare(problem, device)
    check = check_correctness(prepared, policy, device)
    return method, prepared, check


def _anatomy(problem: Problem, tiles: int, device: torch.device) -> dict[str, dict]:
    """Callables that run parts of the kernel: shared-row blocks, local-row blocks (both with the sparse
    problem's config), and the kernel dense with the config it would use for a dense problem: a config
    tuned for short sparse key loops can be a poor one for long dense ones (seen on an H100)."""
    layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, tiles)
    dense_layout = HilbertLayout(problem.height, problem.width, problem.text_tokens, 1, centre_fraction=0.0)
    q, k, v = problem.random_qkv(device)
    out = torch.empty_like(q)
    config, _ = default_config(layout, problem.head_dim, q.dtype, device)
    dense_config, _ = default_config(dense_layout, problem.head_dim, q.dtype, device)
    table = block_table(layout, 0, config.block_m, device)
    shared_blocks = int((table[:, 0] < layout.shared_tokens).sum())
    parts = {"shared rows only": (table[:shared_blocks], config),
             "local rows only": (table[shared_blocks:], config),
             "kernel run dense (T=1, f=0)": (block_table(dense_layout, 0, dense_config.block_m, device), dense_config)}
    anatomy = {}
    for name, (part, cfg) in parts.items():
        t = part.to(torch.int64)
        keys = ((t[:, 3::2] - t[:, 2::2] + cfg.block_n - 1) // cfg.block_n * cfg.block_n).sum(1)
        flops = 4.0 * problem.batch * problem.heads * problem.head_dim * float((keys * cfg.block_m).sum())
        anatomy[name] = {"fn": (lambda p=part, c=cfg: launch(q, k, v, out, p, c)), "computed_flops": flops,
                         "config": cfg.name}
    return anatomy


def bench_resolution(resolution: str, tiles: int, device: torch.device, timing: TimingPolicy,
                     policy: CorrectnessPolicy, **problem_kwargs) -> list[dict]:
    """Rows for one resolution; ``problem_kwargs`` override the Flux shapes (tests use tiny ones)."""
    width, height = (int(x) for x in resolution.split("x"))
    base = Problem.from_pixels(width, height, **problem_kwargs)
    rows, fns = [], {}
    specs = [(f"hilberta T={tiles} phase {layer}", {"method": "hilberta", "tiles": tiles}, layer) for layer in range(4)]
    specs += [(f"flex (same mask) phase {layer}", {"method": "hilberta_flex", "tiles": tiles}, layer)
              for layer in range(4)]
    specs += [(name, name, 0) for name in DENSE]
    for label, spec, layer in specs:
        problem = replace(base, layer=layer)
        method, prepared, check = _prepare(spec, problem, device, policy)
        row = {"name": label, "method": method.name, "layer": layer, "resolution": resolution, "correctness": check}
        if prepared is not None and check.get("passed"):
            q, k, v = problem.random_qkv(device)
            fns[label] = lambda p=prepared, q=q, k=k, v=v: p.run(q, k, v)
            row.update(token_density=prepared.token_density, block_density=prepared.block_density,
                       computed_flops=prepared.computed_flops, dense_flops=problem.dense_flops,
                       backend=prepared.backend, config=prepared.extra.get("config"))
        rows.append(row)
    for name, part in _anatomy(base, tiles, device).items():
        fns[name] = part["fn"]
        rows.append({"name": name, "method": "hilberta-anatomy", "layer": 0, "resolution": resolution,
                     "computed_flops": part["computed_flops"], "dense_flops": base.dense_flops,
                     "config": part["config"]})
    samples = time_interleaved(fns, timing, device)
    for row in rows:
        if row["name"] in samples:
            row.update(summarize(samples[row["name"]]), samples_ms=samples[row["name"]])
            row["computed_tflops"] = row["computed_flops"] / row["median_ms"] / 1e9
    _derive(rows)
    return rows


def _derive(rows: list[dict]) -> None:
    """Speedups against the dense baselines and FlexAttention, fraction of ideal, and the anatomy's
    prediction: the sparse work at the rate of the same kernel run dense."""
    timed = {r["name"]: r for r in rows if "median_ms" in r}
    cudnn = timed.get("sdpa_cudnn")
    dense_kernel = timed.get("kernel run dense (T=1, f=0)")
    for row in rows:
        if "median_ms" not in row or not row["name"].startswith("hilberta"):
            continue
        phase = row["layer"]
        flex = timed.get(f"flex (same mask) phase {phase}")
        row["speedup"] = {name: timed[name]["median_ms"] / row["median_ms"] for name in DENSE if name in timed}
        if flex:
            row["speedup"]["flex_same_mask"] = flex["median_ms"] / row["median_ms"]
        if cudnn:
            row["ideal_ms"] = cudnn["median_ms"] * row["token_density"]
            row["fraction_of_ideal"] = row["ideal_ms"] / row["median_ms"]
        if dense_kernel:
            rate = dense_kernel["computed_flops"] / dense_kernel["median_ms"]
            row["predicted_at_dense_kernel_rate_ms"] = row["computed_flops"] / rate


def to_markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# HilbertA kernel benchmark on {env.get('gpu_name', 'unknown card')}", "",
             f"torch {env.get('versions', {}).get('torch')}, triton {env.get('versions', {}).get('triton')}, "
             f"driver {env.get('driver_version')}; B=1, H=24, D=128, bf16, 512 text tokens, centre 1/4.", "",
             "| resolution | what | median ms [95% CI] | rel. err | token / block density | computed TFLOP/s "
             "| vs FA2 | vs cuDNN | vs Flex | fraction of ideal | at dense-kernel rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ms" not in r:
            reason = r.get("correctness", {}).get("reason") or f"rel. err {r.get('correctness', {}).get('rel_err')}"
            lines.append(f"| {r['resolution']} | {r['name']} | not timed: {reason} |||||||||")
            continue
        ci = r["ci95_ms"]
        err = r.get("correctness", {}).get("rel_err")
        sp = r.get("speedup", {})
        dens = (f"{r['token_density']:.3f} / {r['block_density']:.3f}" if "token_density" in r else "")
        fmt = lambda x, f="{:.2f}x": f.format(x) if x is not None else ""  # noqa: E731
        lines.append(
            f"| {r['resolution']} | {r['name']} | {r['median_ms']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            f"{'' if err is None else f'{err:.1e}'} | {dens} | {r['computed_tflops']:.0f} | "
            f"{fmt(sp.get('sdpa_flash'))} | {fmt(sp.get('sdpa_cudnn'))} | {fmt(sp.get('flex_same_mask'))} | "
            f"{fmt(r.get('fraction_of_ideal'), '{:.0%}')} | "
            f"{fmt(r.get('predicted_at_dense_kernel_rate_ms'), '{:.3f} ms')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="1024x1024,2048x2048")
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("results/bench-hilberta"))
    parser.add_argument("--budget-ms", type=float, default=1500.0, help="sampling time per callable")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_hilberta needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    timing = TimingPolicy(warmup_ms=100, min_samples=20, max_samples=300, budget_ms=args.budget_ms, rounds=5)
    policy = CorrectnessPolicy(rows=1024)
    env = fingerprint(device)
    rows = [row for res in args.resolutions.split(",")
            for row in bench_resolution(res, args.tiles, device, timing, policy)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_hilberta.json").write_text(json.dumps(
        {"env": env, "timing": timing.to_dict(), "rows": rows}, indent=1, default=str))
    markdown = to_markdown(rows, env)
    (args.out / "bench_hilberta.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
