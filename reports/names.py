"""Human names for the open-ended fields the page lists as recorded (env fingerprint, timing policy, locality).

`human_name(key)` turns a dotted results key into words: exact names first (`NAMES`), then patterns
(`PATTERNS`, e.g. ``neighbour_share.r4``), else the key with underscores and dots spelled out.
`display_value(key, value)` formats a value by what its key says it holds (bytes, watts, MHz ...) and
never shows a tool's error output as if it were a value.
"""

from __future__ import annotations

import json
import re

from reports.formatting import MISSING, fmt_bytes, fmt_celsius, fmt_float, fmt_mhz_int, fmt_ms, fmt_text, fmt_watts

NAMES = {
    "device": "device", "gpu_name": "GPU", "gpu_uuid": "GPU UUID", "compute_capability": "architecture",
    "sm_count": "streaming multiprocessors", "memory_bytes": "GPU memory", "l2_bytes": "L2 cache",
    "driver_version": "NVIDIA driver", "cuda_runtime": "CUDA runtime", "cudnn_version": "cuDNN",
    "versions.nvidia_ml_py": "nvidia-ml-py", "versions.flash_attn": "flash-attn",
    "versions.flash_attn_4": "flash-attn-4 (FA4)", "versions.cutlass_dsl": "CUTLASS DSL", "nvml.status": "NVML",
    "nvml.power_limit_w": "power cap", "nvml.power_w": "power at idle (after the run)",
    "nvml.power_source": "power reading", "nvml.sm_clock_mhz": "SM clock at idle",
    "nvml.mem_clock_mhz": "memory clock at idle", "nvml.max_sm_clock_mhz": "SM clock, maximum",
    "nvml.max_mem_clock_mhz": "memory clock, maximum", "nvml.temp_c": "temperature at idle",
    "nvml.performance_state": "performance state", "nvml.throttle_reasons": "clock-event reasons at idle",
    "git.commit": "commit", "git.dirty": "uncommitted changes", "git.reason": "commit source",
    "host.cpu_count": "CPU cores", "warmup_ms": "warm-up per case", "min_samples": "samples, at least",
    "max_samples": "samples, at most", "budget_ms": "timing budget per case", "rounds": "rounds",
    "l2_flush": "L2 flushed before each sample", "cuda_graph": "CUDA graphs", "timer": "timer",
    # locality statistics (baselines.locality)
    "bbox_area_mean": "bounding box of a query's keys, mean area (tokens)",
    "image_keys_mean": "image keys per query, mean", "bbox_fill_mean": "bounding-box fill, mean",
    "queries": "queries sampled", "sampled": "sampled (not every query)",
}
PATTERNS = (
    (re.compile(r"^neighbour_share\.r(\d+)$"), "neighbours kept within radius {0}"),
    (re.compile(r"^versions\.(\w+)$"), "{0}"),
    (re.compile(r"^env_vars\.(\w+)$"), "${0}"),
)
# Units by key suffix; the first that matches formats the value.
UNITS = (("_bytes", fmt_bytes), ("_mhz", fmt_mhz_int), ("_w", fmt_watts), ("_c", fmt_celsius), ("_ms", fmt_ms))
TOOL_ERROR = re.compile(r"fatal:|error:|Traceback|not a git repository", re.IGNORECASE)


def human_name(key: str) -> str:
    if key in NAMES:
        return NAMES[key]
    for pattern, template in PATTERNS:
        match = pattern.match(key)
        if match:
            return template.format(*match.groups())
    return key.replace("_", " ").replace(".", " › ")


def display_value(key: str, value: object) -> str:
    """``value`` formatted for ``key``; a tool's error text is cut to what precedes it, or hidden."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        match = TOOL_ERROR.search(value)
        if match:
            kept = value[:match.start()].split(";")[0].strip(" ;:,")
            return kept.removesuffix(" git said").strip() or "(error output of a tool, not shown)"
        return value
    if isinstance(value, (dict, list)) and not all(isinstance(item, str) for item in value):
        return json.dumps(value, default=str)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        render = next((fmt for suffix, fmt in UNITS if key.endswith(suffix)), None)
        if render is not None:
            return render(value)
        return str(value) if isinstance(value, int) else fmt_float(value)
    return fmt_text(value)
