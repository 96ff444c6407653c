"""End-to-end Flux with Ulysses-style sequence parallelism over the GPUs of one host (kind "e2e" rows).

Each rank holds 1/N of the joint sequence: 1/N of the text tokens and 1/N of the image tokens (in the
method's order: HilbertA's permutation is applied once per forward, to the whole input, before sharding,
as in the one-GPU path). Everything in Flux but attention is per token, so each rank runs the model on its
shard; in every attention layer one all-to-all turns ``[B, H, L/N, D]`` q, k, v into ``[B, H/N, L, D]``
(all heads' sequence gathered, heads scattered), the method's own attention runs on the full sequence for
its H/N heads (any registered method: it is prepared for a problem with H/N heads), and a second
all-to-all brings the output back. The rank's output shard is all-gathered and restored to row-major
order at exit. With one GPU no wrapper is installed: that is exactly `harness.apps.e2e.measure`'s step.

Why torch.distributed directly (evaluated 2026-11-28): yunchang (USP) picks its local kernel from its own
``AttnType`` enum (flash-attn, SageAttention, torch) instead of taking a function, and pulls flash-attn in;
xfuser (xDiT) builds on yunchang and wraps whole diffusers pipelines with its own runtime (a large install);
para-attn intercepts ``F.scaled_dot_product_attention`` through a TorchFunctionMode, so a Triton kernel
called directly (HilbertA) bypasses it. The all-to-all needed here is two ``all_to_all_single`` calls per
layer; it runs with NCCL on GPUs and gloo on the CPU (the tests), NVLink multicast off.

`run_parallel_cases(section, results, gpus)` measures every (resolution, method) at 1 GPU and at each
power of two up to ``gpus`` (and ``gpus``), one ``torch.multiprocessing`` spawn per GPU count: step latency
(``samples_ms``), all-to-all time per step (CUDA events around each exchange, separate instrumented pass),
scaling efficiency ``t1 / (N * tN)`` and the output's difference from the one-GPU output of the same
method. A method that cannot run here (FA4 without flash-attn-4 or before Hopper, say) is asked once, before
any process starts, and gets "unavailable" rows with the reason; when that leaves no dense method, `DENSE_FALLBACK`
runs in its place, its rows naming what it stands in for and why (``e2e.dense_fallback``).
``torchrun --nproc-per-node N -m harness.apps.e2e.parallel PAYLOAD.json`` runs one GPU count.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from baselines.problem import DTYPES
from baselines.registry import resolve, spec_of
from harness.apps.e2e.contenders import identity, processors  # processors: None without diffusers
from harness.apps.e2e.flux_model import (
    FluxInputs,
    build_transformer,
    diffusers_available,
    flux_problem,
    model_spec,
    random_inputs,
)
from harness.apps.e2e.measure import _derived
from harness.apps.e2e.settings import E2ESettings, step_policy
from harness.core.lifecycle import error_fields, release_memory
from harness.core.schema import Row
from harness.core.spread import NO_MULTICAST_ENV
from harness.measure.stats import summarize
from harness.measure.timing import time_interleaved, time_once_ms
from kernels.reference import relative_error

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
PARALLEL = "ulysses: all-to-all over heads around each attention layer (torch.distributed)"
DENSE_FALLBACK = "sdpa_cudnn"  # runs when every dense method asked for is unavailable here


# ---- the all-to-all attention ----------------------------------------------------------------------------

def exchange(send: torch.Tensor, group=None) -> torch.Tensor:
    """``send[j]`` goes to rank j; returns ``recv`` with ``recv[i]`` from rank i (dim 0 = ranks)."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def scatter_heads(qkv: torch.Tensor, world: int) -> torch.Tensor:
    """``[3, B, H, L/N, D]`` -> ``[N, 3, B, H/N, L/N, D]``: chunk j of the heads for rank j."""
    three, batch, heads, length, dim = qkv.shape
    return qkv.view(three, batch, world, heads // world, length, dim).permute(2, 0, 1, 3, 4, 5).contiguous()


def join_sequence(recv: torch.Tensor, text_local: int) -> torch.Tensor:
    """``[N, 3, B, h, L/N, D]`` (rank i's shard: its text, then its image tokens) -> ``[3, B, h, L, D]`` in the
    one-GPU order: all text tokens, then all image tokens."""
    parts = [recv[..., :text_local, :], recv[..., text_local:, :]]
    return torch.cat([p.permute(1, 2, 3, 0, 4, 5).flatten(3, 4) for p in parts], dim=3)


def split_sequence(out: torch.Tensor, world: int, text_local: int) -> torch.Tensor:
    """The inverse of `join_sequence` for one tensor: ``[B, h, L, D]`` -> ``[N, B, h, L/N, D]``."""
    text, image = out[:, :, :world * text_local], out[:, :, world * text_local:]
    shards = torch.cat([text.unflatten(2, (world, -1)), image.unflatten(2, (world, -1))], dim=3)
    return shards.permute(2, 0, 1, 3, 4).contiguous()


def gather_heads(recv: torch.Tensor) -> torch.Tensor:
    """``[N, B, h, L/N, D]`` (head chunk i from rank i) -> ``[B, H, L/N, D]``."""
    return recv.permute(1, 0, 2, 3, 4).flatten(1, 2)


class UlyssesAttention:
    """One layer's attention function with the two all-to-alls around it (``[B, H, L/N, D]`` in and out)."""

    def __init__(self, attention, layer: int, world: int, text_local: int, group=None,
                 comm_timer: processors.AttentionTimer | None = None,
                 attention_timer: processors.AttentionTimer | None = None):
        self.attention, self.layer, self.world, self.text_local, self.group = attention, layer, world, text_local, group
        self.comm_timer, self.attention_timer = comm_timer, attention_timer

    def _timed(self, timer, key: int, call):
        return call() if timer is None else timer.time(key, call)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        send = scatter_heads(torch.stack([q, k, v]), self.world)
        # keys 2*layer and 2*layer + 1: the timer starts a new forward at key 0 only
        full = join_sequence(self._timed(self.comm_timer, 2 * self.layer, lambda: exchange(send, self.group)),
                             self.text_local)
        out = self._timed(self.attention_timer, self.layer, lambda: self.attention(full[0], full[1], full[2]))
        back = split_sequence(out, self.world, self.text_local)
        return gather_heads(self._timed(self.comm_timer, 2 * self.layer + 1, lambda: exchange(back, self.group)))


# ---- sharding the forward --------------------------------------------------------------------------------

def check_divisible(problem, world: int) -> None:
    """Ulysses needs heads, text tokens and image tokens divisible by the GPU count (ValueError naming which)."""
    for name, value in (("heads", problem.heads), ("text tokens", problem.text_tokens),
                        ("image tokens", problem.image_tokens)):
        if value % world:
            raise ValueError(f"{problem.resolution}: {name} ({value}) are not divisible by {world} GPUs")


def shard(inputs: FluxInputs, rank: int, world: int) -> FluxInputs:
    """This rank's contiguous 1/N of the text and of the image tokens (and their RoPE ids)."""
    def part(x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.chunk(world, dim=dim)[rank]

    return replace(inputs, hidden_states=part(inputs.hidden_states, 1),
                   encoder_hidden_states=part(inputs.encoder_hidden_states, 1),
                   img_ids=part(inputs.img_ids, 0), txt_ids=part(inputs.txt_ids, 0))


def parallel_forward(model, inputs: FluxInputs, order, rank: int, world: int, group=None) -> torch.Tensor:
    """One sharded forward on row-major inputs; every rank returns the full row-major output ``[B, H*W, C]``."""
    if order is not None:
        inputs = order.permute(inputs)  # once per forward, on the whole input
    local = model(**shard(inputs, rank, world).model_kwargs(), return_dict=False)[0].contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    output = torch.cat(parts, dim=1)
    return output if order is None else order.restore(output)


# ---- one rank --------------------------------------------------------------------------------------------

def _per_step(timer: processors.AttentionTimer, steps: int) -> list[float]:
    return [sum(forward.values()) for forward in timer.collect()[-steps:]]


def _measure_method(model, settings: E2ESettings, problem, inputs, method, rank: int, world: int,
                    device: torch.device) -> tuple[dict, torch.Tensor]:
    """Step latency, all-to-all and attention time per step of one method at this GPU count (rank 0's view)."""
    layers = len(processors.layer_names(model))
    prepared = processors.prepare_layers(method, replace(problem, heads=problem.heads // world), device, layers)
    order = processors.TokenOrder.from_image_order(prepared[0].image_order, device)
    comm, attn = processors.AttentionTimer(device), processors.AttentionTimer(device)

    def install(timed: bool) -> None:
        functions = [p.run for p in prepared] if world == 1 else [
            UlyssesAttention(p.run, layer, world, problem.text_tokens // world,
                             comm_timer=comm if timed else None, attention_timer=attn if timed else None)
            for layer, p in enumerate(prepared)]
        timer = attn if timed and world == 1 else None
        processors.install(model, processors.method_processors(model, functions, timer, settings.contiguous_qkv))

    @torch.inference_mode()
    def forward() -> torch.Tensor:
        if world == 1:
            return processors.transformer_forward(model, inputs, order)
        return parallel_forward(model, inputs, order, rank, world)

    install(timed=False)
    outputs: list[torch.Tensor] = []
    first_call_ms = time_once_ms(lambda: outputs.append(forward()), device)
    policy = step_policy(settings.step_repeats)  # a fixed count: every rank makes the same collective calls
    steps = time_interleaved({method.name: forward}, policy, device)[method.name]
    install(timed=True)
    instrumented = time_interleaved({method.name: forward}, policy, device)[method.name]
    a2a = _per_step(comm, settings.step_repeats) if world > 1 else [0.0] * settings.step_repeats
    attention = _per_step(attn, settings.step_repeats)
    fields = {"samples_ms": steps, "setup_ms": {"first_call": first_call_ms},
              "backend": prepared[0].backend, "e2e": {
                  "gpus": world, "parallel": PARALLEL if world > 1 else "none (one GPU)",
                  "all_to_all_ms": statistics.median(a2a), "attention_ms": statistics.median(attention),
                  "instrumented_step_ms": statistics.median(instrumented),
                  "all_to_all_share": statistics.median(a / s for a, s in zip(a2a, instrumented)),
                  "text_tokens": problem.text_tokens,
                  "permutation": "whole input once per forward, then sharded" if order is not None else "none"}}
    return fields, outputs[0]


def rank_main(rank: int, world: int, payload: dict, init_method: str) -> None:
    """One process of one GPU count: measure every (resolution, method); rank 0 writes the fields and outputs."""
    os.environ.update(NO_MULTICAST_ENV)
    device = torch.device(f"cuda:{rank}") if payload["device_type"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(BACKENDS[device.type], init_method=init_method, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        settings = E2ESettings.from_section(payload["section"])
        spec, dtype = model_spec(settings.model), DTYPES[settings.dtype]
        model = build_transformer(spec, device, dtype, settings.weights, seed=settings.seed)
        out_dir, found = Path(payload["out"]), {}
        for width, height in settings.resolutions:
            problem = flux_problem(spec, width, height, settings.text_tokens, settings.dtype)
            inputs = random_inputs(spec, problem, device, dtype, seed=settings.seed, guidance_scale=settings.guidance)
            for name in settings.methods:
                method = resolve(name)
                key = f"{problem.resolution}/{method.name}"
                try:
                    check_divisible(problem, world)
                    fields, output = _measure_method(model, settings, problem, inputs, method, rank, world, device)
                    if rank == 0:
                        torch.save(output.cpu(), out_dir / f"{problem.resolution}-{method.name}-gpus{world}.pt")
                        fields["e2e"]["cards"] = ([torch.cuda.get_device_name(i) for i in range(world)]
                                                  if device.type == "cuda" else ["cpu"] * world)
                except Exception as exc:  # this method at this GPU count; a rank-only failure hangs the others
                    fields = error_fields(exc, f"{world} GPU(s)")  # until the collective timeout
                finally:
                    release_memory(device)
                found[key] = fields
        if rank == 0:
            (out_dir / f"gpus{world}.json").write_text(json.dumps(found, default=str))
    finally:
        dist.destroy_process_group()


# ---- the whole run: GPU counts, rows -----------------------------------------------------------------------

def gpu_counts(gpus: int) -> list[int]:
    """1, each power of two below ``gpus``, and ``gpus``: the counts measured (1 is the efficiency's base)."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    return sorted({1, gpus, *(2**i for i in range(1, gpus.bit_length()) if 2**i < gpus)})


def runnable(methods: list, device: torch.device) -> tuple[list, dict[str, str], dict | None]:
    """(the methods to measure, {name: why not} of the others, the dense fallback's note or None): an
    unavailable method is dropped; if no dense method is left, `DENSE_FALLBACK` is added when it can run."""
    refused = {m.name: avail.reason for m in methods for avail in [m.availability(device)] if not avail}
    kept = [m for m in methods if m.name not in refused]
    missing = [m.name for m in methods if m.dense_reference and m.name in refused]
    fallback = resolve(DENSE_FALLBACK)
    if not missing or any(m.dense_reference for m in kept) or not fallback.availability(device):
        return kept, refused, None
    return [*kept, fallback], refused, {"for": missing, "reason": "; ".join(f"{n}: {refused[n]}" for n in missing)}


def run_parallel_cases(e2e_section, results_file, gpus: int, device_type: str | None = None) -> list[dict]:
    """Measure every (resolution, method) at each of `gpu_counts(gpus)` and add one row per count to
    ``results_file`` (unavailable methods: one row per count with the reason); returns the rows."""
    import torch.multiprocessing as mp

    settings = E2ESettings.from_section(e2e_section)
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if processors is None:
        raise ValueError(f"--gpus: {diffusers_available().reason}")
    if settings.model == "flux-dev" and device_type != "cuda":
        raise ValueError(f"--gpus: the 12B-parameter Flux model needs CUDA devices (this run is on {device_type}); "
                         "use --model tiny")
    if device_type == "cuda" and gpus > torch.cuda.device_count():
        raise ValueError(f"--gpus {gpus}: this host has {torch.cuda.device_count()} CUDA device(s)")
    spec = model_spec(settings.model)
    problems = [flux_problem(spec, w, h, settings.text_tokens, settings.dtype) for w, h in settings.resolutions]
    asked = [resolve(name) for name in settings.methods]
    methods, refused, fallback = runnable(asked, torch.device("cuda:0" if device_type == "cuda" else device_type))
    section = {**settings.to_dict(), "methods": [spec_of(m) for m in methods]}
    stand_in = methods[-1] if fallback else None  # listed right after the first dense method it replaces
    shown = [m for method in asked for m in ([method, stand_in] if stand_in and method.name == fallback["for"][0]
                                             else [method])]
    if fallback:
        print(f"no dense method can run here ({fallback['reason']}); {DENSE_FALLBACK} runs in its place",
              file=sys.stderr)
    os.environ.update(NO_MULTICAST_ENV)  # inherited by the spawned processes
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hilberta-sp-") as tmp:
        measured, outputs = {}, Path(tmp)
        for world in gpu_counts(gpus) if methods else []:
            payload = {"section": section, "out": tmp, "device_type": device_type}
            init = f"file://{outputs / f'rendezvous-{world}'}"
            try:
                mp.spawn(rank_main, args=(world, payload, init), nprocs=world, join=True)
                measured[world] = json.loads((outputs / f"gpus{world}.json").read_text())
            except Exception as exc:  # a process died: every case of this GPU count fails with the reason
                measured[world] = {f"{p.resolution}/{m.name}": error_fields(exc, f"{world} GPU(s)")
                                   for p in problems for m in methods}
        for problem in problems:
            references: dict[int, list[dict]] = {}
            for method in shown:
                for world in gpu_counts(gpus):
                    row = (_row(problem, method, world, measured, outputs, references.get(world, []))
                           if method.name not in refused else
                           Row(kind="e2e", case=f"{problem.resolution}/e2e-gpus{world}/{method.name}",
                               problem=problem.to_dict(), status="unavailable", reason=refused[method.name],
                               e2e={"gpus": world}, **identity(method)).to_dict())
                    if method is stand_in:
                        row.setdefault("e2e", {})["dense_fallback"] = fallback
                    results_file.add_case(row)
                    rows.append(row)
                    if row["dense_reference"] and row["status"] == "ok":
                        references.setdefault(world, []).append(row)
    return rows


def _row(problem, method, world: int, measured: dict, outputs: Path, references: list[dict]) -> dict:
    key = f"{problem.resolution}/{method.name}"
    fields = dict(measured[world][key])
    if "samples_ms" in fields:
        fields.update({k: v for k, v in summarize(fields["samples_ms"]).items()
                       if k in ("median_ms", "mean_ms", "iqr_ms", "ci95_ms", "n_samples")})
        output = torch.load(outputs / f"{problem.resolution}-{method.name}-gpus{world}.pt")
        one = outputs / f"{problem.resolution}-{method.name}-gpus1.pt"
        rel = relative_error(output, torch.load(one)) if one.is_file() else None
        finite = bool(torch.isfinite(output).all())
        fields.update(status="ok" if finite else "incorrect",
                      reason=None if finite else "the transformer output is not finite",
                      correctness={"rel_err": rel, "passed": finite, "reference": "the same method on 1 GPU"})
        base = measured.get(1, {}).get(key, {})
        if base.get("samples_ms"):
            t1 = statistics.median(base["samples_ms"])
            fields["e2e"].update(step_ms_1gpu=t1, speedup_vs_1gpu=t1 / fields["median_ms"],
                                 scaling_efficiency=t1 / (world * fields["median_ms"]),
                                 output_rel_diff_vs_1gpu=rel)
        fields["derived"] = _derived(fields, references)
    return Row(kind="e2e", case=f"{problem.resolution}/e2e-gpus{world}/{method.name}", problem=problem.to_dict(),
               **{**identity(method), **fields}).to_dict()


def parallel_table(rows: list[dict]) -> str:
    """One line per (resolution, method, GPU count): step, all-to-all, efficiency, speedups, output check."""
    def fmt(value, spec: str) -> str:
        return "" if value is None else format(value, spec)

    header = ("resolution", "method", "GPUs", "status", "step ms", "all-to-all ms", "a2a share", "efficiency",
              "vs 1 GPU", "vs dense", "rel diff vs 1 GPU")
    lines = [header]
    for row in rows:
        e2e, derived = row.get("e2e") or {}, row.get("derived") or {}
        speedup = (derived.get("speedup") or {}).get(derived.get("fastest_dense"))
        lines.append((str((row.get("problem") or {}).get("resolution", "")), str(row.get("method")),
                      row["case"].split("/")[1].removeprefix("e2e-gpus"), row["status"],
                      fmt(row.get("median_ms"), ".1f"), fmt(e2e.get("all_to_all_ms"), ".1f"),
                      fmt(e2e.get("all_to_all_share"), ".1%"), fmt(e2e.get("scaling_efficiency"), ".0%"),
                      fmt(e2e.get("speedup_vs_1gpu"), ".2f"), fmt(speedup, ".2f"),
                      fmt(e2e.get("output_rel_diff_vs_1gpu"), ".2g")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  {row['case']}: {row['status']}: {row['reason']}" for row in rows if row.get("reason")]
    notes += [f"  {row['case']}: stands in for {', '.join(fb['for'])} ({fb['reason']})" for row in rows
              for fb in [(row.get("e2e") or {}).get("dense_fallback")] if fb]
    return "\n".join(out + (["", "notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    """Under torchrun: one GPU count (the launcher's), the measured fields into the payload's ``out``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or "RANK" not in os.environ:
        print("usage: torchrun --nproc-per-node N -m harness.apps.e2e.parallel PAYLOAD.json "
              "(PAYLOAD: {section, out, device_type}); `python -m harness e2e --gpus N` spawns on its own",
              file=sys.stderr)
        return 2
    rank_main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), json.loads(Path(argv[0]).read_text()),
              "env://")
    return 0


if __name__ == "__main__":
    sys.exit(main())
