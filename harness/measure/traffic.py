"""Memory traffic of one attention call, counted by Nsight Compute (ncu) in a child process.

`measure_traffic` runs ``python -m harness.core.ncu_target`` under ``ncu --clock-control none`` (measure the
card as found; ncu's default locks base clocks) and profiles only the kernels launched inside the
target's NVTX range, i.e. one warmed-up call of the method. It sums DRAM bytes read and written, L2
(LTS) bytes and kernel durations over those launches. ncu replays each kernel with caches flushed
(``--cache-control all``), so the byte counts are cold-L2 counts and ``kernel_ms`` is a replay duration:
useful for achieved bandwidth, never to be mixed with latency numbers.

The same pass reads the SM counters of `harness.measure.ncu_counters` (tensor pipe, occupancy, SM throughput,
stall reasons; duration-weighted over the call's kernels). Only counters that ``ncu --query-metrics`` lists
are asked for (the listing is read once, by the availability probe's run); if ncu still refuses a name
("Failed to find metric"), the call is profiled again with the byte and duration metrics alone, so an
unknown counter never costs the byte counts, and later calls leave that name out.

ncu needs access to the GPU's performance counters, which some machines refuse (ERR_NVGPUCTRPERM):
`ncu_available` probes once with a real profiled matmul and turns any failure into a reason.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from baselines.base import Availability
from harness import PROJECT_ROOT
from harness.measure.ncu_counters import (
    COUNTER_METRICS,
    choose_metrics,
    counter_value,
    empty_counters,
    parse_metric_listing,
    unknown_metric,
    weighted_counters,
)
from harness.measure.power import unavailable

MEASURED_RANGE = "hilberta_bench_measured"  # the NVTX range ncu profiles; harness.core.ncu_target opens it

FALLBACK_NCU = Path("/usr/local/cuda/bin/ncu")
NOT_FOUND = "ncu not found on PATH or in /usr/local/cuda/bin"
# ncu metric -> key of its total in the result (bytes, or nanoseconds for the duration)
NCU_METRICS = {
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "lts__t_bytes.sum": "l2_bytes",
    "gpu__time_duration.sum": "kernel_ns",
}
# ncu unit -> factor to bytes or nanoseconds (ncu scales with SI prefixes; we also ask for base units)
UNIT_SCALE = {
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
    "nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
    # with --print-units base, ncu 2025+ writes the short forms (seen on an H100: "ns")
    "B": 1.0, "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9,
}
# Error codes ncu prints when it cannot profile, and what they mean.
KNOWN_NCU_ERRORS = {
    "ERR_NVGPUCTRPERM": "no permission to read GPU performance counters",
    "ERR_NVGPUCTRBUSY": "the performance counters are in use by another tool (e.g. DCGM)",
}
# ncu binary -> the names it refused in this process ("Failed to find metric"): never asked for again
REFUSED_COUNTERS: dict[str, set[str]] = {}
KERNEL_MS_NOTE = "ncu replay duration with cold L2 and clock-control none: for bandwidth only, not a latency"
PROBE_CODE = f"""
import torch
a = torch.randn(256, 256, device="cuda")
a @ a
torch.cuda.synchronize()
torch.cuda.nvtx.range_push("{MEASURED_RANGE}")
a @ a
torch.cuda.synchronize()
torch.cuda.nvtx.range_pop()
"""
REQUIRED_COLUMNS = ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    return str(FALLBACK_NCU) if os.access(FALLBACK_NCU, os.X_OK) else None


def _metric_value(text: str, unit: str, metric: str) -> float | None:
    """A metric value in bytes or nanoseconds; thousands separators are dropped; ``n/a`` is None."""
    text = text.replace(",", "").strip()
    if text in ("", "n/a"):
        return None
    if unit not in UNIT_SCALE:
        raise ValueError(f"unknown ncu unit {unit!r} for {metric}; known: {sorted(UNIT_SCALE)}")
    return float(text) * UNIT_SCALE[unit]


def parse_ncu_csv(text: str) -> list[dict]:
    """Kernel launches from ``ncu --csv`` (details page) output, in profiling order:
    ``[{"id": int, "kernel": name, "metrics": {ncu metric: value in bytes or ns}}]``.

    ``==PROF==``/``==WARNING==`` lines and anything before the header are skipped; only the metrics in
    `NCU_METRICS` (bytes, ns) and `COUNTER_METRICS` (%, ratios) are kept. No header means no launches.
    """
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), None)
    if header is None:
        return []
    rows = csv.DictReader(line for line in lines[header:] if line.startswith('"'))
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.fieldnames]
    if missing:
        raise ValueError(f"ncu CSV lacks the column(s) {missing}; header: {rows.fieldnames}")
    launches: dict[int, dict] = {}
    for row in rows:
        metric, launch_id = row["Metric Name"], int(row["ID"])
        launch = launches.setdefault(launch_id, {"id": launch_id, "kernel": row["Kernel Name"], "metrics": {}})
        if metric in NCU_METRICS:
            launch["metrics"][metric] = _metric_value(row["Metric Value"], row["Metric Unit"], metric)
        elif metric in COUNTER_METRICS:
            launch["metrics"][metric] = counter_value(row["Metric Value"], row["Metric Unit"])
    return [launches[key] for key in sorted(launches)]


def summarize_launches(launches: list[dict]) -> dict:
    """Byte and duration sums over the launches, and the SM counters' duration-weighted means
    (`weighted_counters`); a metric missing from any launch makes its total or mean None (never a guess)."""
    totals = {}
    for metric, key in NCU_METRICS.items():
        values = [launch["metrics"].get(metric) for launch in launches]
        totals[key] = None if not values or None in values else sum(values)
    read, write, kernel_ns = totals["dram_read_bytes"], totals["dram_write_bytes"], totals["kernel_ns"]
    dram = None if read is None or write is None else read + write
    return {
        "launches": len(launches),
        "kernels": [launch["kernel"] for launch in launches],
        "dram_read_bytes": None if read is None else round(read),
        "dram_write_bytes": None if write is None else round(write),
        "dram_bytes": None if dram is None else round(dram),
        "l2_bytes": None if totals["l2_bytes"] is None else round(totals["l2_bytes"]),
        "kernel_ms": None if kernel_ns is None else kernel_ns / 1e6,
        "kernel_ms_note": KERNEL_MS_NOTE,
        "achieved_dram_gbps": dram / kernel_ns if dram is not None and kernel_ns else None,  # bytes/ns = GB/s
        **weighted_counters(launches),
    }


def failure_reason(output: str) -> str:
    """The most telling line of a failed ncu run: a known error code, else its ==ERROR== lines, else the
    last line."""
    for code, meaning in KNOWN_NCU_ERRORS.items():
        if code in output:
            return f"{code}: {meaning}"
    errors = [line.strip() for line in output.splitlines() if line.startswith("==ERROR==")]
    if errors:
        return " | ".join(errors[:3])
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "ncu printed nothing"


def ncu_command(ncu: str, csv_path: Path, target: list[str], kernel_regex: str | None = None,
                metrics: list[str] | None = None) -> list[str]:
    """The ncu command line; ``metrics`` defaults to the byte metrics and every counter."""
    metrics = metrics or [*NCU_METRICS, *COUNTER_METRICS]
    command = [ncu, "--clock-control", "none", "--target-processes", "all",
               "--nvtx", "--nvtx-include", f"{MEASURED_RANGE}/",  # trailing slash: a push/pop range
               "--metrics", ",".join(metrics), "--csv", "--print-units", "base", "--log-file", str(csv_path)]
    if kernel_regex:
        command += ["--kernel-name", f"regex:{kernel_regex}"]
    return command + target


def _run(command: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run in its own process group (ncu starts the target as a child): on timeout kill the whole group.
    Returns (exit code or None on timeout, stdout and stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
           "LC_NUMERIC": "C"}  # a decimal comma would read as a thousands separator
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output
    return process.returncode, output


@functools.cache
def metric_listing(ncu: str) -> frozenset[str] | None:
    """The base metric names ``ncu --query-metrics`` lists for the attached GPU, read once per ncu binary;
    None when the listing failed or lacks the DRAM counters (then every counter is asked for)."""
    code, output = _run([ncu, "--query-metrics"], timeout_s=120)
    names = parse_metric_listing(output) if code == 0 else frozenset()
    return names if "dram__bytes_read" in names else None


def _profile_once(ncu: str, metrics: list[str], target: list[str], csv_path: Path, kernel_regex: str | None,
                  timeout_s: float) -> tuple[dict, str]:
    """One ncu run: (result, everything ncu and the target printed)."""
    code, output = _run(ncu_command(ncu, csv_path, target, kernel_regex, metrics), timeout_s)
    log_path = csv_path.with_suffix(".log")
    log_path.write_text(output)
    report = csv_path.read_text() if csv_path.exists() else ""
    paths = {"csv_path": str(csv_path), "log_path": str(log_path)}
    if code is None:
        return {"status": "failed", "reason": f"ncu ran past {timeout_s} s", **paths}, report + "\n" + output
    launches = parse_ncu_csv(report)
    if code != 0 or not launches:
        reason = failure_reason(report + "\n" + output)
        result = {"status": "failed", "reason": f"ncu exit code {code}, {len(launches)} launches: {reason}", **paths}
        return result, report + "\n" + output
    return {"status": "ok", **summarize_launches(launches), **paths}, ""


def _profile(target: list[str], csv_path: Path, kernel_regex: str | None, timeout_s: float) -> dict:
    """Bytes and counters of the target's measured range. If ncu refuses a counter's name, this call is
    profiled again with the byte metrics only and the name is not asked for again by this process (the
    availability probe usually meets it first, so the cases keep their other counters)."""
    ncu = find_ncu()
    if ncu is None:
        return unavailable(NOT_FOUND)
    refused_before = REFUSED_COUNTERS.setdefault(ncu, set())
    metrics, skipped = choose_metrics(list(NCU_METRICS), metric_listing(ncu), refused_before)
    result, output = _profile_once(ncu, metrics, target, csv_path, kernel_regex, timeout_s)
    refused = unknown_metric(output) if result["status"] == "failed" else None
    if refused is None:
        return {**result, "counters_reason": None, "counters_skipped": skipped} if result["status"] == "ok" else result
    refused_before.add(refused)
    bytes_csv = csv_path.with_name(f"{csv_path.stem}-bytes-only{csv_path.suffix}")
    retry, _ = _profile_once(ncu, list(NCU_METRICS), target, bytes_csv, kernel_regex, timeout_s)
    if retry["status"] != "ok":
        return retry
    why = f"ncu refused the counter {refused!r} ({result['log_path']}): profiled again with the byte metrics only"
    return {**retry, **empty_counters(why, skipped)}


@functools.cache
def ncu_available() -> Availability:
    """Whether ncu exists and can read DRAM counters here: one real profiled matmul (probed once)."""
    ncu = find_ncu()
    if ncu is None:
        return Availability(False, NOT_FOUND)
    code, output = _run([ncu, "--version"], timeout_s=60)
    if code != 0:
        return Availability(False, f"`ncu --version` failed: {failure_reason(output)}")
    version = output.strip().splitlines()[-1]
    if not torch.cuda.is_available():
        return Availability(False, f"{version}, but no CUDA device to profile")
    with tempfile.TemporaryDirectory(prefix="ncu-probe-") as tmp:
        result = _profile([sys.executable, "-c", PROBE_CODE], Path(tmp) / "probe.csv", None, timeout_s=300)
    if result["status"] != "ok":
        return Availability(False, f"ncu cannot profile here: {result['reason']}")
    if result["dram_read_bytes"] is None:
        return Availability(False, "ncu ran but reported no DRAM byte counters")
    return Availability(True, version)


def _file_stem(case_spec: dict, spec: dict) -> str:
    """``ncu-<case id or method-resolution>-<hash of the spec>``: readable and unique per case."""
    method = spec["method"] if isinstance(spec["method"], str) else spec["method"].get("method", "")
    label = case_spec.get("case") or f"{method}-{spec['problem'].get('resolution', '')}"
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"ncu-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}-{digest}"


def measure_traffic(case_spec: dict, out_dir: str | Path, kernel_regex: str | None = None,
                    timeout_s: float = 600, warmup: int = 3) -> dict:
    """DRAM/L2 bytes, kernel time and SM counters (`harness.measure.ncu_counters`) of one call of
    ``case_spec = {"method": registry spec, "problem": Problem.to_dict()}``, or ``{"status": "unavailable" |
    "failed", "reason", ...}``.

    ``kernel_regex`` restricts the sum to matching kernel names (ncu ``--kernel-name regex:``); the raw
    CSV and ncu's log are kept in ``out_dir``.
    """
    if not isinstance(case_spec, dict) or not {"method", "problem"} <= set(case_spec):
        raise ValueError(f"case_spec needs the keys 'method' and 'problem', got {case_spec!r}")
    avail = ncu_available()
    if not avail:
        return unavailable(avail.reason)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"method": case_spec["method"], "problem": case_spec["problem"]}
    target = [sys.executable, "-m", "harness.core.ncu_target", "--spec", json.dumps(spec), "--warmup", str(warmup)]
    result = _profile(target, out_dir / f"{_file_stem(case_spec, spec)}.csv", kernel_regex, timeout_s)
    return {**result, "kernel_regex": kernel_regex}
