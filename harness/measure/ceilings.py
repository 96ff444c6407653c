"""Roofline ceilings measured in the run itself: a dense bf16 GEMM and a large device-to-device copy.

Both are timed with the same schedule as the cases (`harness.measure.timing.time_interleaved`: single
calls, random balanced order, L2 flushed before each call) while `harness.measure.power.PowerSampler`
runs, so the ceilings belong to the clocks of this run rather than to a datasheet. The GEMM multiplies
random normal ``n x n`` bf16 matrices (``2 n^3`` flops, median time); the copy moves ``copy_bytes`` from
one buffer to another (read plus write: ``2 x copy_bytes`` through DRAM, median time); ``sm_clock_mhz``
is the median NVML SM clock read during the GEMM's own calls (None without NVML).
"""

from __future__ import annotations

import statistics

import torch

from harness.measure.power import PowerSampler, case_conditions
from harness.measure.timing import TimingPolicy, time_interleaved

POLICY = TimingPolicy(warmup_ms=300.0, min_samples=20, max_samples=40, budget_ms=1000.0, rounds=20)
GEMM_N = 8192
COPY_BYTES = 1 << 30


def measure_ceilings(device: torch.device | str, policy: TimingPolicy = POLICY, gemm_n: int = GEMM_N,
                     copy_bytes: int = COPY_BYTES) -> tuple[dict | None, str | None]:
    """``({"gemm_tflops", "copy_gbps", "sm_clock_mhz", "how"}, None)``, or ``(None, reason)`` off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"roofline ceilings need a CUDA device, not {device}"
    generator = torch.Generator(device).manual_seed(0)
    a, b = (torch.randn(gemm_n, gemm_n, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(2))
    product = torch.empty_like(a)
    src = torch.randn(copy_bytes // 2, device=device, dtype=torch.bfloat16, generator=generator)
    dst = torch.empty_like(src)
    fns = {"gemm": lambda: torch.mm(a, b, out=product), "copy": lambda: dst.copy_(src)}
    with PowerSampler(device) as sampler:
        result = time_interleaved(fns, policy, device)
    gemm_ms, copy_ms = statistics.median(result["gemm"]), statistics.median(result["copy"])
    clock = case_conditions(sampler.samples, {"gemm": result.windows("gemm")})["gemm"]["sm_clock_mhz"]["median"]
    how = (f"torch.mm bf16 {gemm_n}^3 (random normal) and Tensor.copy_ of {src.nbytes / 2**30:.2f} GiB "
           f"(read + write counted), median of {len(result['gemm'])} calls each, "
           f"{result.schedule['kind']} schedule, L2 flush {result.schedule['l2_flush']}; "
           f"SM clock: median NVML reading during the GEMM calls"
           + ("" if sampler.unavailable_reason is None else f" (unavailable: {sampler.unavailable_reason})"))
    return {"gemm_tflops": 2.0 * gemm_n**3 / gemm_ms / 1e9, "copy_gbps": 2.0 * src.nbytes / copy_ms / 1e6,
            "sm_clock_mhz": clock, "how": how}, None
