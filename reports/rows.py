"""Flatten results rows into one tidy pandas table; the one module that knows where a field sits in a row.

`NUMERIC_FIELDS`, `TEXT_FIELDS` and `OBJECT_FIELDS` map each column of the table to its path inside a
results row (docs/contracts.md, results.json schema 1 and 2's optional fields). For the sub-dictionaries whose keys the contract
leaves open (power, clocks, traffic, e2e) the paths are the names the harness writes; if one changes, fix
it here and nowhere else. A missing key, a null, a NaN or a value of the wrong type becomes NaN (numbers)
or None (text), never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from reports.formatting import number_or_none

NUMERIC_FIELDS: dict[str, tuple] = {
    "height": ("problem", "height"),
    "width": ("problem", "width"),
    "layer": ("problem", "layer"),
    "seq_len": ("problem", "seq_len"),
    "median_ms": ("median_ms",),
    "mean_ms": ("mean_ms",),
    "iqr_ms": ("iqr_ms",),
    "ci_lo_ms": ("ci95_ms", 0),
    "ci_hi_ms": ("ci95_ms", 1),
    "rel_err": ("correctness", "rel_err"),
    "max_abs_err": ("correctness", "max_abs_err"),
    "tol": ("correctness", "tol"),
    "rows_checked": ("correctness", "rows_checked"),
    "token_density": ("density", "token"),
    "block_density": ("density", "block"),
    "dense_flops": ("flops", "dense"),
    "effective_flops": ("flops", "effective"),
    "computed_flops": ("flops", "computed"),
    "tflops_dense_equivalent": ("tflops", "dense_equivalent"),
    "tflops_effective": ("tflops", "effective"),
    "compulsory_bytes": ("bytes", "compulsory"),
    "setup_layout_ms": ("setup_ms", "layout"),
    "setup_first_call_ms": ("setup_ms", "first_call"),
    "setup_permute_ms": ("setup_ms", "permute"),
    "setup_prepare_ms": ("setup_ms", "prepare"),
    "batch": ("problem", "batch"),
    "heads": ("problem", "heads"),
    "head_dim": ("problem", "head_dim"),
    "text_tokens": ("problem", "text_tokens"),
    "device_index": ("device_index",),
    # harness.measure.power.measure_energy: energy over a window of calls, with that window's own sampler summary
    "joules_per_call": ("power", "joules_per_call"),
    "joules_per_call_se": ("power", "joules_per_call_se"),
    "mean_watts": ("power", "mean_watts"),
    "max_watts": ("power", "power_w_max"),
    "power_calls": ("power", "calls"),
    "power_window_s": ("power", "window_s"),
    "energy_sm_mhz_median": ("power", "sm_clock_mhz_median"),
    # per-case "conditions": NVML samples taken during this case's own timed calls (schema 2). The older
    # "clocks.during_timing" summary was one run-wide reading copied into every row, so it is not read.
    "sm_mhz_median": ("conditions", "sm_clock_mhz", "median"),
    "sm_mhz_min": ("conditions", "sm_clock_mhz", "min"),
    "sm_mhz_max": ("conditions", "sm_clock_mhz", "max"),
    "mem_mhz_median": ("conditions", "mem_clock_mhz", "median"),
    "cond_watts_median": ("conditions", "power_w", "median"),
    "cond_watts_max": ("conditions", "power_w", "max"),
    "temp_c_max": ("conditions", "temperature_c", "max"),
    "cond_samples": ("conditions", "n_samples"),
    "cond_window_s": ("conditions", "window_s"),
    # harness.measure.traffic (ncu): DRAM and L2 bytes of one call, kernel time under ncu, achieved DRAM bandwidth
    "dram_read_bytes": ("traffic", "dram_read_bytes"),
    "dram_write_bytes": ("traffic", "dram_write_bytes"),
    "dram_bytes": ("traffic", "dram_bytes"),
    "l2_bytes": ("traffic", "l2_bytes"),
    "ncu_kernel_ms": ("traffic", "kernel_ms"),
    "achieved_dram_gbps": ("traffic", "achieved_dram_gbps"),
    # the same ncu pass's SM counters (harness.measure.ncu_counters): % of peak (0-100), warp cycles per issue
    "tensor_pipe_pct": ("traffic", "tensor_pipe_pct"),
    "achieved_occupancy_pct": ("traffic", "achieved_occupancy_pct"),
    "sm_throughput_pct": ("traffic", "sm_throughput_pct"),
    "warp_cycles_per_issue": ("traffic", "warp_cycles_per_issue"),
    # end-to-end Flux rows (kind "e2e", harness.apps.e2e.measure): median_ms is one transformer step
    "attention_share": ("e2e", "attention_share"),
    "attention_ms": ("e2e", "attention_ms"),
    "joules_per_image": ("e2e", "joules_per_image"),
    "image_ms": ("e2e", "image_ms"),
    "peak_memory_bytes": ("e2e", "peak_memory_bytes"),
    "output_diff_vs_dense": ("e2e", "output_rel_diff_vs_dense"),
    "steps": ("e2e", "steps"),
    "key_order_layers": ("e2e", "key_order_layers"),
    # tuning rows (kind "tune"): the launch configuration that was timed
    "block_m": ("params", "block_m"),
    "block_n": ("params", "block_n"),
    "num_warps": ("params", "num_warps"),
    "num_stages": ("params", "num_stages"),
}

TEXT_FIELDS: dict[str, tuple] = {
    "case": ("case",),
    "kind": ("kind",),
    "method": ("method",),
    "label": ("label",),
    "category": ("category",),  # kind of method: dense | hilberta | sliding_tile | neighborhood | control
    "backend": ("backend",),
    "status": ("status",),
    "reason": ("reason",),
    "resolution": ("problem", "resolution"),
    "dtype": ("problem", "dtype"),
    "reference": ("correctness", "reference"),
    "energy_source": ("power", "energy_source"),
    "power_status": ("power", "status"),
    "power_reason": ("power", "reason"),
    "locality_status": ("locality", "status"),
    "locality_reason": ("locality", "reason"),
    "traffic_status": ("traffic", "status"),
    "traffic_reason": ("traffic", "reason"),
    "counters_reason": ("traffic", "counters_reason"),
    "ci_method": ("ci_method",),
    "aa_of": ("aa_of",),
    "config_source": ("extra", "config_source"),
    "power_schedule": ("power", "schedule"),
    "tune_stage": ("extra", "stage"),
}

# Values kept as they are: flags, lists and sub-dictionaries rendered generically.
OBJECT_FIELDS: dict[str, tuple] = {
    "passed": ("correctness", "passed"),
    "dense_reference": ("dense_reference",),
    "throttle_reasons_energy": ("power", "throttle_reasons"),
    "throttle_reasons": ("conditions", "throttle_reasons"),
    "conditions": ("conditions",),
    "config": ("extra", "config"),
    "locality": ("locality",),
    "samples_ms": ("samples_ms",),
    "top_stalls": ("traffic", "top_stalls"),  # [{"reason", "cycles_per_issue"}, ...], largest first
    # tuning rows: the kernel's on/off knobs, whether `harness tune` stored this configuration, whether it is the default
    "flat_loop": ("params", "flat_loop"),
    "tma": ("params", "tma"),
    "head_major": ("params", "head_major"),
    "chosen": ("extra", "chosen"),
    "default": ("extra", "default"),
}

STATUS_OK = "ok"


def dig(row: object, path: Sequence) -> object:
    """The value at ``path`` (keys and list indices) inside ``row``, or None where any step is missing."""
    node = row
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, Sequence) or isinstance(node, str) or len(node) <= step:
                return None
            node = node[step]
        elif isinstance(node, Mapping):
            node = node.get(step)
        else:
            return None
    return node


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one level with dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _row_record(row: Mapping, index: int) -> dict:
    record = {name: number_or_none(dig(row, path)) for name, path in NUMERIC_FIELDS.items()}
    record.update({name: _text(dig(row, path)) for name, path in TEXT_FIELDS.items()})
    record.update({name: dig(row, path) for name, path in OBJECT_FIELDS.items()})
    record["case"] = record["case"] or f"row {index}"
    record["method"] = record["method"] or "(unnamed)"
    record["label"] = record["label"] or record["method"]
    record["status"] = record["status"] or "unknown"
    record["dense_reference"] = record["dense_reference"] is True
    samples = record["samples_ms"]
    n_samples = number_or_none(dig(row, ("n_samples",)))
    if n_samples is None and isinstance(samples, list):
        n_samples = float(len(samples))
    record["n_samples"] = n_samples
    return record


def rows_frame(cases: Sequence[Mapping]) -> pd.DataFrame:
    """One row per results case, with the columns of `NUMERIC_FIELDS`, `TEXT_FIELDS` and `OBJECT_FIELDS`."""
    records = [_row_record(row if isinstance(row, Mapping) else {}, i) for i, row in enumerate(cases)]
    columns = [*NUMERIC_FIELDS, *TEXT_FIELDS, *OBJECT_FIELDS, "n_samples"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame[list(NUMERIC_FIELDS) + ["n_samples"]] = frame[list(NUMERIC_FIELDS) + ["n_samples"]].astype(float)
    return frame


def resolution_order(frame: pd.DataFrame) -> list[str]:
    """Resolutions present, smallest sequence first (so 1024x1024 comes before 2048x2048)."""
    known = frame.dropna(subset=["resolution"])
    if known.empty:
        return []
    by_length = known.groupby("resolution")["seq_len"].max().fillna(math.inf)
    return sorted(by_length.index, key=lambda res: (by_length[res], res))


def timed_kernels(frame: pd.DataFrame) -> pd.DataFrame:
    """Kernel rows that passed correctness and carry a median time: the only rows that may be ranked. An A/A
    control twin (``aa_of`` set: the same method timed twice) is a noise check, not another phase."""
    keep = (frame["kind"] == "kernel") & (frame["status"] == STATUS_OK) & frame["median_ms"].notna()
    keep &= frame["aa_of"].isna()
    return frame[keep & frame["resolution"].notna()]


PHASE_BASIS = ("mean over the sliding phases (layers) timed; a method that does not slide is timed at one "
               "layer. Flux cycles through the phases evenly, so this is the cost per attention layer")
INTERVAL_RULE = ("interval: from the 95 % CIs of both medians (a multi-phase method's CI is the mean of its "
                 "phases' CI ends, as if their errors were fully correlated: conservative)")


def method_summary(kernels: pd.DataFrame) -> pd.DataFrame:
    """One row per (resolution, method) on one phase basis (`PHASE_BASIS`): the mean of the per-phase medians.

    Adds ``phases`` (how many layers were averaged), ``phase_min_ms`` / ``phase_max_ms``, ``ci_lo_ms`` /
    ``ci_hi_ms`` (`INTERVAL_RULE`), ``fastest_dense_ms`` (the fastest dense reference at that resolution),
    ``speedup`` (fastest dense / this method) with ``speedup_lo`` / ``speedup_hi`` and ``fraction_of_ideal``
    (fastest dense x token density / this method).
    """
    columns = ["resolution", "method", "label", "category", "dense_reference", "median_ms", "phases",
               "phase_min_ms", "phase_max_ms", "ci_lo_ms", "ci_hi_ms", "token_density", "block_density",
               "tflops_dense_equivalent", "tflops_effective", "fastest_dense_ms", "fastest_dense_label",
               "speedup", "speedup_lo", "speedup_hi", "fraction_of_ideal"]
    if kernels.empty:
        return pd.DataFrame(columns=columns)
    grouped = kernels.groupby(["resolution", "method"], sort=False)
    summary = grouped.agg(
        label=("label", "first"), category=("category", "first"), dense_reference=("dense_reference", "first"),
        median_ms=("median_ms", "mean"), phases=("median_ms", "size"), phase_min_ms=("median_ms", "min"),
        phase_max_ms=("median_ms", "max"), ci_lo_ms=("ci_lo_ms", "mean"), ci_hi_ms=("ci_hi_ms", "mean"),
        token_density=("token_density", "mean"), block_density=("block_density", "mean"),
        tflops_dense_equivalent=("tflops_dense_equivalent", "mean"), tflops_effective=("tflops_effective", "mean"),
    ).reset_index()
    # an interval exists only where every phase has one (the mean skips NaN: that would be another basis)
    complete = grouped[["ci_lo_ms", "ci_hi_ms"]].count().min(axis=1).to_numpy() == summary["phases"].to_numpy()
    summary.loc[~complete, ["ci_lo_ms", "ci_hi_ms"]] = math.nan
    dense = summary[summary["dense_reference"]]
    fastest = dense.loc[dense.groupby("resolution")["median_ms"].idxmin()] if not dense.empty else dense
    fastest = fastest.set_index("resolution")
    by_resolution = summary["resolution"]
    summary["fastest_dense_ms"] = by_resolution.map(fastest["median_ms"]).astype(float)
    summary["fastest_dense_label"] = by_resolution.map(fastest["label"])
    summary["speedup"] = summary["fastest_dense_ms"] / summary["median_ms"]
    summary["speedup_lo"] = by_resolution.map(fastest["ci_lo_ms"]).astype(float) / summary["ci_hi_ms"]
    summary["speedup_hi"] = by_resolution.map(fastest["ci_hi_ms"]).astype(float) / summary["ci_lo_ms"]
    summary["fraction_of_ideal"] = summary["fastest_dense_ms"] * summary["token_density"] / summary["median_ms"]
    return summary[columns]
