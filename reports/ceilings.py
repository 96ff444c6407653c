"""Roofline ceilings for the run: measured in the run when it timed them, else the datasheet scaled.

Measured: results["ceilings"] = {"gemm_tflops", "copy_gbps", "sm_clock_mhz", "how"} (a dense bf16 GEMM and a
device copy timed in the same run). Otherwise the card's datasheet peak (`DATASHEET`, dense BF16 tensor
cores without structured sparsity, and HBM bandwidth) is scaled by the SM clock the cases actually ran at
over the card's maximum SM clock (env.nvml.max_sm_clock_mhz): a power-capped H100 at 1.7 GHz cannot reach
the 1.98 GHz datasheet figure. The L2 roof is results["ceilings"]["l2_gbps"] when measured, else the
highest L2 throughput any case reached here (L2 bytes / ncu kernel time), which is a floor for the roof.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports.formatting import fmt_gbps, fmt_mhz_int, fmt_tflops, number_or_none
from reports.rows import dig

# matched against the lower-cased card name in order: more specific names first
DATASHEET = (
    ("h200", "NVIDIA H200 SXM", 989.0, 4800.0),
    ("h100 nvl", "NVIDIA H100 NVL", 835.0, 3900.0),
    ("h100 pcie", "NVIDIA H100 PCIe", 756.0, 2000.0),
    ("h100", "NVIDIA H100 SXM", 989.0, 3350.0),
)


@dataclass(frozen=True)
class Ceilings:
    tflops: float
    gbps: float
    source: str  # one sentence: where the two numbers come from
    l2_gbps: float | None = None
    l2_source: str = ""


def run_sm_clock(frame: pd.DataFrame) -> float | None:
    """The median SM clock under load over the cases: per-case conditions, else the energy windows."""
    for column in ("sm_mhz_median", "energy_sm_mhz_median"):
        values = frame[column].dropna()
        if not values.empty:
            return float(values.median())
    return None


def _l2_roof(results: dict, frame: pd.DataFrame) -> tuple[float | None, str]:
    measured = number_or_none(dig(results, ("ceilings", "l2_gbps")))
    if measured and measured > 0:
        return measured, f"L2 roof measured in this run ({fmt_gbps(measured)})"
    rates = (frame["l2_bytes"] / frame["ncu_kernel_ms"] / 1e6).dropna()
    rates = rates[rates > 0]
    if rates.empty:
        return None, ""
    best = frame.loc[rates.idxmax(), "label"]
    return float(rates.max()), (f"L2 roof: the highest L2 throughput reached here ({fmt_gbps(rates.max())}, "
                                f"{best}); a floor for the card's true L2 bandwidth, which was not measured")


def ceilings(results: dict, frame: pd.DataFrame) -> Ceilings | None:
    """The run's ceilings, or None when neither measured nor a known card."""
    l2_gbps, l2_source = _l2_roof(results, frame)
    gemm = number_or_none(dig(results, ("ceilings", "gemm_tflops")))
    copy = number_or_none(dig(results, ("ceilings", "copy_gbps")))
    if gemm and copy and gemm > 0 and copy > 0:
        how = dig(results, ("ceilings", "how"))
        source = f"measured in this run: dense bf16 GEMM {fmt_tflops(gemm)}, device copy {fmt_gbps(copy)}"
        return Ceilings(gemm, copy, source + (f" ({how})" if how else ""), l2_gbps, l2_source)
    name = str(dig(results, ("env", "gpu_name")) or "").lower()
    for key, model, tflops, gbps in DATASHEET:
        if key in name:
            break
    else:
        return None
    clock = run_sm_clock(frame)
    top = number_or_none(dig(results, ("env", "nvml", "max_sm_clock_mhz")))
    source = f"datasheet {model} ({fmt_tflops(tflops)} dense BF16, {fmt_gbps(gbps)})"
    if clock and top and clock < top:
        tflops *= clock / top
        source += (f", compute scaled by the SM clock measured under load ({fmt_mhz_int(clock)} of "
                   f"{fmt_mhz_int(top)}): {fmt_tflops(tflops)}; not measured in this run")
    else:
        source += "; not measured in this run, and no SM clock under load was recorded to scale it"
    return Ceilings(tflops, gbps, source, l2_gbps, l2_source)
