"""Memory traffic: DRAM bytes per call against the compulsory bytes, and a roofline.

Roofline ceilings come from the run's env when the harness measured them (``peak_tflops`` from a large
matmul, ``peak_gbps`` from a device copy), else from the datasheet of the card named in env; the chart's
legend says which. Arithmetic intensity = effective (unmasked) FLOPs / DRAM bytes read and written.
"""

from __future__ import annotations

from reports import figures
from reports.blocks import Paragraph, Section
from reports.formatting import fmt_bytes, fmt_float, fmt_ms, fmt_ratio, number_or_none
from reports.run import Run
from reports.sections.common import CASE_COLUMNS, missing_measurement_note
from reports.tables import Column, build_table

ID, TITLE = "traffic", "Memory traffic"

# Dense BF16/FP16 tensor-core peak and HBM bandwidth from NVIDIA datasheets (no structured sparsity),
# matched against the lower-cased card name in order: more specific names first.
DATASHEET = (
    ("h200", "NVIDIA H200 SXM", 989.0, 4800.0),
    ("h100 nvl", "NVIDIA H100 NVL", 835.0, 3900.0),
    ("h100 pcie", "NVIDIA H100 PCIe", 756.0, 2000.0),
    ("h100", "NVIDIA H100 SXM", 989.0, 3350.0),
)

COLUMNS = [
    *CASE_COLUMNS,
    Column("dram_read_bytes", "DRAM read", fmt_bytes, numeric=True),
    Column("dram_write_bytes", "DRAM written", fmt_bytes, numeric=True),
    Column("dram_bytes", "DRAM total", fmt_bytes, numeric=True),
    Column("compulsory_bytes", "compulsory", fmt_bytes, numeric=True),
    Column("excess", "total / compulsory", fmt_ratio, numeric=True),
    Column("l2_bytes", "L2 bytes", fmt_bytes, numeric=True),
    Column("ncu_kernel_ms", "kernel ms (under ncu)", fmt_ms, numeric=True),
    Column("achieved_dram_gbps", "achieved DRAM GB/s", fmt_float, numeric=True),
]


def ceilings(env: dict, card: str | None) -> dict | None:
    """``{"tflops", "gbps", "source"}`` for the roofline, or None when neither measured nor known."""
    measured = number_or_none(env.get("peak_tflops")), number_or_none(env.get("peak_gbps"))
    if all(value and value > 0 for value in measured):
        return {"tflops": measured[0], "gbps": measured[1],
                "source": f"measured on this card ({measured[0]:.0f} TFLOP/s, {measured[1]:.0f} GB/s)"}
    name = (card or "").lower()
    for key, model, tflops, gbps in DATASHEET:
        if key in name:
            return {"tflops": tflops, "gbps": gbps,
                    "source": f"datasheet {model} ({tflops:.0f} TFLOP/s dense BF16, {gbps:.0f} GB/s)"}
    return None


def section(run: Run) -> Section:
    frame = run.frame
    measured = frame[frame["dram_bytes"].notna()].copy()
    if measured.empty:
        return Section.empty(ID, TITLE, missing_measurement_note(
            frame, "DRAM traffic (ncu)", "traffic_status", "traffic_reason"))
    measured["excess"] = measured["dram_bytes"] / measured["compulsory_bytes"]
    result = Section(ID, TITLE)
    result.add(build_table(measured, COLUMNS, caption="DRAM bytes of one call, from ncu"))
    result.add_figure(figures.traffic_bars(measured))
    points = measured.dropna(subset=["effective_flops", "tflops_effective"])
    points = points[points["dram_bytes"] > 0].assign(intensity=lambda f: f["effective_flops"] / f["dram_bytes"])
    if points.empty:
        result.add(Paragraph("No row has both DRAM bytes and effective TFLOP/s: no roofline.", css="note"))
        return result
    ceiling = ceilings(run.env, run.card)
    if ceiling is None:
        caption = (f"No ceilings drawn: env has no measured peak_tflops/peak_gbps and the card "
                   f"({run.card or 'not recorded'}) is not in the datasheet table.")
    else:
        caption = f"Ceilings: {ceiling['source']}. Achieved TFLOP/s from the timed median, bytes from ncu."
    result.add_figure(figures.roofline(points, ceiling), caption=caption)
    return result
