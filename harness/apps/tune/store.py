"""Storing winners into ``kernels/configs/<arch>.json``: the provenance kept with them, and
`store_from_results` (the winners of a finished tune run, from its results file alone)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from harness.core.results import load_results
from harness.measure import stats
from kernels import config as kconfig
from kernels.config import KernelConfig

from .targets import TARGETS


def store_meta(env: dict) -> dict:
    """Provenance stored with a winner: GPU, date, torch, Triton and driver versions."""
    versions = env.get("versions") or {}
    return {"gpu": env.get("gpu_name"), "date": datetime.now().date().isoformat(), "torch": versions.get("torch"),
            "triton": versions.get("triton"), "driver": env.get("driver_version")}


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
        meta = {**store_meta(env), "date": str(data.get("created"))[:10], "from_results": data["run_id"]}
        written.append(kconfig.store(best["kernel"], arch, key, KernelConfig(**best["params"]), evidence, meta))
    return written
