"""``python -m harness e2e``: end-to-end Flux latency with each attention method, as a run of its own.

    python -m harness e2e [--resolutions 1024x1024,2048x2048] [--methods sdpa_cudnn,hilberta,...]
                          [--steps 28] [--step-repeats 5] [--weights DIR] [--out DIR] [--skip-denoise]

Writes ``results.json`` (rows of kind "e2e", `harness.apps.e2e.measure`) and env.json into the output
directory, the HTML report when the ``reports`` package is importable, and prints a table. Exit code 1
when a case failed or its output was not finite, else 0 (unavailable and skipped cases are not failures).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from harness.apps.e2e.flux_model import MODEL_SPECS

SUITE_NAME = "e2e-flux"
GIB = 1024**3


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolutions", type=_comma_list, default=["1024x1024", "2048x2048"], metavar="WxH,...",
                        help="image sizes in pixels, width x height (default: 1024x1024,2048x2048)")
    parser.add_argument("--methods", type=_comma_list, default=["sdpa_cudnn", "hilberta"], metavar="NAME,...",
                        help="registry methods or families; diffusers' own SDPA model always runs as the reference "
                             "(default: sdpa_cudnn,hilberta)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps of the full image (default: 28)")
    parser.add_argument("--step-repeats", type=int, default=5, help="timed transformer steps per method (default: 5)")
    parser.add_argument("--weights", metavar="DIR",
                        help="local FLUX.1-dev folder (transformer/, vae/); default: random weights, no download")
    parser.add_argument("--out", metavar="DIR", help="results directory (default: results/<UTC time>-e2e-flux)")
    parser.add_argument("--skip-denoise", action="store_true",
                        help="transformer steps only: no full image, VAE decode or energy")
    parser.add_argument("--max-denoise-s", type=float, metavar="S",
                        help="skip the full image where steps x step time would exceed S seconds")
    parser.add_argument("--contiguous-qkv", action="store_true",
                        help="give the methods contiguous [B, H, L, D] q, k, v (copies timed with attention) "
                             "instead of views of the projections; the diffusers reference is unchanged")
    parser.add_argument("--model", choices=sorted(MODEL_SPECS), default="flux-dev",
                        help="flux-dev (default) or tiny (a CPU-sized model of the same architecture)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default for flux-dev) or float32 (default for tiny)")
    parser.add_argument("--text-tokens", type=int, default=None, help="prompt length (default 512; 16 for tiny)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="sequence parallelism (Ulysses) over N GPUs of this host, measured at 1, 2, ... N GPUs "
                             "(harness.apps.e2e.parallel); step latency only")
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report")


def settings_section(args: argparse.Namespace) -> dict:
    """The ``[e2e]`` table these arguments stand for (checked by `E2ESettings.from_section`)."""
    tiny = args.model == "tiny"
    section = {"resolutions": args.resolutions, "methods": args.methods, "steps": args.steps,
               "step_repeats": args.step_repeats, "skip_denoise": args.skip_denoise, "model": args.model,
               "contiguous_qkv": args.contiguous_qkv,
               "dtype": args.dtype or ("float32" if tiny else "bfloat16"),
               "text_tokens": args.text_tokens if args.text_tokens is not None else (16 if tiny else 512)}
    if args.weights:
        section["weights"] = str(Path(args.weights).expanduser().resolve())
    if args.max_denoise_s is not None:
        section["max_denoise_s"] = args.max_denoise_s
    return section


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value * scale, spec)


def e2e_table(rows: list[dict]) -> str:
    """One line per (resolution, method): step latency, attention share, full image, memory, energy."""
    header = ("resolution", "method", "status", "step ms", "95% CI", "vs dense", "attn share", "attn ms",
              "permute ms", "image s", "decode ms", "peak GiB", "J/image", "rel diff")
    lines = [header]
    for row in rows:
        e2e, derived = row.get("e2e") or {}, row.get("derived") or {}
        fastest = derived.get("fastest_dense")
        speedup = (derived.get("speedup") or {}).get(fastest)
        ci = row.get("ci95_ms")
        image_ms = e2e.get("image_ms", e2e.get("denoise_ms"))
        lines.append((
            str((row.get("problem") or {}).get("resolution", "")), str(row.get("method")), row.get("status", ""),
            _fmt(row.get("median_ms"), ".1f"),
            f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in ci else "",
            f"{speedup:.2f}x" if speedup else "",
            _fmt(e2e.get("attention_share"), ".1%"), _fmt(e2e.get("attention_ms"), ".1f"),
            _fmt((row.get("setup_ms") or {}).get("permute"), ".3f"),
            _fmt(image_ms, ".2f", 1e-3), _fmt(e2e.get("vae_decode_ms"), ".0f"),
            _fmt(e2e.get("peak_memory_bytes"), ".1f", 1 / GIB), _fmt(e2e.get("joules_per_image"), ".0f"),
            _fmt(e2e.get("output_rel_diff_vs_dense"), ".3g"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  {row['case']}: {row['status']}: {row['reason']}" for row in rows if row.get("reason")]
    notes += [f"  {row['case']}: {part}: {e2e[part]['reason']}" for row in rows
              for e2e in [row.get("e2e") or {}] for part in ("denoise", "vae_decode") if part in e2e]
    footer = ["", "rel diff: the transformer output vs diffusers' SDPA model on the same inputs "
                  "(numerical check with random weights, not image quality)"]
    return "\n".join(out + footer + (["", "notes:", *notes] if notes else []))


def run(args: argparse.Namespace) -> int:
    import torch

    from harness.apps.e2e.measure import E2ESettings, run_e2e_cases
    from harness.core.results import RESULTS_NAME, ResultsFile, utc_now
    from harness.core.paths import claim_run_dir
    from harness.core.lifecycle import default_device
    from harness.core.runner import exit_status, optional

    section = settings_section(args)
    E2ESettings.from_section(section)  # bad input fails before anything is built or written
    device = torch.device(args.device) if args.device else default_device()
    out_dir, run_id = claim_run_dir(args.out, SUITE_NAME)  # exclusive: a second run into it stops here
    results = ResultsFile(out_dir / RESULTS_NAME, run_id=run_id, suite=SUITE_NAME, policy={"e2e": section})
    fingerprint, reason = optional("harness.measure.envinfo", "fingerprint")
    results.write_env(fingerprint(device) if fingerprint else {"status": "unavailable", "reason": reason})
    complete = False
    try:
        if args.gpus > 1:
            from harness.apps.e2e.parallel import run_parallel_cases

            rows = run_parallel_cases(section, results, args.gpus, device.type)
        else:
            rows = run_e2e_cases(section, results, device)
        complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: the results file holds the cases finished so far", file=sys.stderr)
        return 130
    finally:
        results.set(finished=utc_now(), complete=complete)
    if args.gpus > 1:
        from harness.apps.e2e.parallel import parallel_table

        print(parallel_table(rows))
    else:
        print(e2e_table(rows))
    print(f"\nresults: {out_dir / RESULTS_NAME}")
    code = exit_status(results.data)
    if not args.no_report:
        build_report, reason = optional("reports", "build_report")
        if build_report is None:
            print(f"no HTML report: {reason}", file=sys.stderr)
        else:
            print(f"report: {build_report(out_dir)}")
    return code
