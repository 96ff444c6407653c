"""Exercise every GPU path of the measurement modules once, on a matmul and one small attention case.

``python -m harness.apps.selfcheck --out DIR`` runs: the environment fingerprint; CUDA-event timing with
and without L2 flush and in CUDA-graph mode (plus a callable that cannot be captured, to see the
fallback), interleaved over two callables; NVML snapshot, sampler and energy over >= 1 s; the ncu probe
and one traffic measurement of a small attention problem. It prints a table and writes
``DIR/selfcheck.json``. A part that is unavailable or fails is recorded with its reason; the script
itself does not crash on it (exit code 0 unless the arguments are wrong).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from baselines.problem import Problem
from harness.measure import envinfo, power, stats, traffic
from harness.measure.timing import TimingPolicy, time_interleaved, time_once_ms

POLICY = TimingPolicy(warmup_ms=200.0, min_samples=20, max_samples=100, budget_ms=1000.0, rounds=4)
TRAFFIC_PROBLEM = Problem(height=32, width=32, text_tokens=64, heads=8, head_dim=128, dtype="bfloat16")


def _matmul(n: int, device: torch.device) -> Callable[[], torch.Tensor]:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return lambda: a @ b


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.2f}"


def _timing_row(samples: list[float], details: dict, flops: float) -> dict:
    summary = stats.summarize(samples)
    return {**summary, "tflops": flops / summary["median_ms"] / 1e9, "details": details, "samples_ms": samples}


def check_fingerprint(device: torch.device, args) -> tuple[dict, str]:
    env = envinfo.fingerprint(device)
    nvml = env["nvml"]
    limit = nvml.get("power_limit_w") if nvml["status"] == "ok" else nvml["reason"]
    return env, (f"{env['gpu_name']} {env['compute_capability']} driver {env['driver_version']} "
                 f"CUDA {env['cuda_runtime']} power limit {limit} git {env['git']['commit'] or env['git']['reason']}")


def check_timing(device: torch.device, args) -> tuple[dict, str]:
    n = args.size
    sizes = {"mm": n, "mm_half": n // 2}  # two callables, to see interleaving at work
    fns = {name: _matmul(size, device) for name, size in sizes.items()}
    result = {"first_call_ms": time_once_ms(_matmul(n + 128, device), device)}  # a new shape: cuBLAS heuristics
    variants = {"events_flush": {}, "events_no_flush": {"l2_flush": False}, "graph_flush": {"cuda_graph": True}}
    for variant, overrides in variants.items():
        timed = time_interleaved(fns, dataclasses.replace(POLICY, **overrides), device)
        result[variant] = {name: _timing_row(timed[name], timed.details[name], 2.0 * sizes[name] ** 3)
                           for name in fns}
    flush, no_flush = result["events_flush"]["mm"], result["events_no_flush"]["mm"]
    graph = result["graph_flush"]["mm"]
    ratio = result["graph_over_eager"] = stats.ratio_ci(flush["samples_ms"], graph["samples_ms"])
    return result, (f"mm {n}: flush {flush['median_ms']:.3f} ms ({flush['tflops']:.0f} TFLOP/s), no flush "
                    f"{no_flush['median_ms']:.3f}, graph[{graph['details']['mode']}] {graph['median_ms']:.3f} "
                    f"(graph/eager {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]), "
                    f"first call {result['first_call_ms']:.1f} ms")


def check_graph_fallback(device: torch.device, args) -> tuple[dict, str]:
    x = torch.randn(1024, device=device)

    def host_sync():  # .item() synchronizes: not capturable, so timing must fall back to eager calls
        return (x * 2).sum().item()

    policy = TimingPolicy(warmup_ms=10.0, min_samples=5, max_samples=10, budget_ms=100.0, rounds=1, cuda_graph=True)
    timed = time_interleaved({"host_sync": host_sync}, policy, device)
    details = timed.details["host_sync"]
    ok = details["mode"] == "eager" and "graph_fallback_reason" in details
    return ({"status": "ok" if ok else "unexpected", "details": details, "n_samples": len(timed["host_sync"])},
            f"mode {details['mode']}: {details.get('graph_fallback_reason', 'NO fallback reason recorded')[:90]}")


def check_nvml(device: torch.device, args) -> tuple[dict, str]:
    avail = power.nvml_available()
    if not avail:
        return {"status": "unavailable", "reason": avail.reason}, avail.reason
    fn = _matmul(args.size, device)
    snapshot = power.snapshot(device)
    with power.PowerSampler(device) as sampler:
        for _ in range(20):
            fn()
        torch.cuda.synchronize(device)
    energy = power.measure_energy(fn, device, min_window_s=1.0)
    result = {"status": energy["status"], "availability": avail.reason, "snapshot": snapshot,
              "sampler": sampler.summary(), "energy": energy}
    if energy["status"] != "ok":
        return result, f"energy: {energy['reason']}"
    return result, (f"{_fmt(energy['joules_per_call'], 1e3)} mJ/call from {energy['energy_source']} "
                    f"(sampled power gives {_fmt(energy['sampled_joules_per_call'], 1e3)}), "
                    f"{_fmt(energy['mean_watts'])} W, SM {energy['sm_clock_mhz_min']}-"
                    f"{energy['sm_clock_mhz_median']} MHz, {energy['calls']} calls in {energy['window_s']:.2f} s, "
                    f"reasons {energy['throttle_reasons']}")


def check_ncu(device: torch.device, args) -> tuple[dict, str]:
    avail = traffic.ncu_available()
    if not avail:
        return {"status": "unavailable", "reason": avail.reason}, avail.reason
    spec = {"method": args.method, "problem": TRAFFIC_PROBLEM.to_dict()}
    measured = traffic.measure_traffic(spec, args.out / "ncu")
    result = {"status": measured["status"], "availability": avail.reason, "case": spec, "traffic": measured,
              "compulsory_bytes": TRAFFIC_PROBLEM.compulsory_bytes}
    if measured["status"] != "ok":
        return result, f"{args.method}: {measured['reason']}"
    return result, (f"{args.method} L={TRAFFIC_PROBLEM.seq_len}: DRAM {measured['dram_bytes'] / 1e6:.2f} MB "
                    f"({measured['dram_bytes'] / TRAFFIC_PROBLEM.compulsory_bytes:.2f}x compulsory), "
                    f"L2 {measured['l2_bytes'] / 1e6:.2f} MB, {measured['achieved_dram_gbps']:.0f} GB/s, "
                    f"{measured['launches']} kernel(s): {', '.join(k[:40] for k in measured['kernels'])}")


# name -> (check, needs CUDA)
CHECKS = {
    "fingerprint": (check_fingerprint, False),
    "timing": (check_timing, True),
    "nvml": (check_nvml, True),
    "ncu": (check_ncu, True),
    # last: a failed capture can leave torch's CUDA generator unusable for the rest of the process
    # (seen on an H100: "Offset increment outside graph capture encountered unexpectedly")
    "graph_fallback": (check_graph_fallback, True),
}


def run_checks(out: Path, size: int = 4096, method: str = "sdpa_cudnn") -> dict:
    args = argparse.Namespace(out=out, size=size, method=method)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    report = {}
    for name, (check, needs_cuda) in CHECKS.items():
        if needs_cuda and not cuda:
            report[name] = {"status": "unavailable", "reason": "no CUDA device", "summary": "no CUDA device"}
            continue
        try:
            result, summary = check(device, args)
            status = result.get("status", "ok")
        except Exception as exc:  # a self-check reports every failure instead of stopping at the first
            result, summary, status = {"traceback": traceback.format_exc()}, f"{type(exc).__name__}: {exc}", "failed"
        report[name] = {**result, "status": status, "summary": summary}
    (out / "selfcheck.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.apps.selfcheck", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for selfcheck.json and ncu files")
    parser.add_argument("--size", type=int, default=4096, help="matmul size N (bf16 N x N @ N x N)")
    parser.add_argument("--method", default="sdpa_cudnn", help="registry method for the traffic check")
    args = parser.parse_args(argv)
    report = run_checks(args.out, args.size, args.method)
    width = max(map(len, report))
    for name, entry in report.items():
        print(f"{name:<{width}}  {entry['status']:<11}  {entry['summary']}")
    print(f"wrote {args.out / 'selfcheck.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
