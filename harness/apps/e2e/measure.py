"""End-to-end Flux latency with each attention method: one results row (kind "e2e") per resolution and method.

The model is built once per process (24 GB of bf16 weights for FLUX.1-dev) and methods are swapped by
installing their attention processors. Per resolution, first diffusers' untouched model
(``diffusers_sdpa``: FluxAttnProcessor, PyTorch picks the SDPA kernel) gives the reference output; then
every contender (the reference itself, dense references next, then the rest, so that speedups can be
quoted as rows arrive) gets:

- ``samples_ms``: transformer step latency (one forward at sigma 1, CUDA events, `harness.measure.timing`), with
  the once-per-forward token permutation inside it for methods that reorder tokens. The steps of all contenders
  of a resolution are interleaved, one each per round in a fresh random order, all of them installed at once
  behind a `processors.Switch` (`interleaved_steps`): under a power cap a method timed in a burst after a
  heavy one is not comparable with one timed after a light one;
- ``setup_ms``: ``prepare`` (all layers), ``first_call`` (compilation), ``permute`` (permute the latents and
  their RoPE ids, restore the output: median of its own timing), the methods' own setup summed over layers;
- ``e2e.attention_share``: from a separate instrumented pass with CUDA events around every attention call
  inside the processors (attention ms / step ms of the same pass, median over steps);
- a full image: a flow-matching Euler loop of ``steps`` transformer calls on random latents and random
  prompt embeddings (no text encoders), then the VAE decode (diffusers' tiled decode where the full one runs
  out of memory, ``e2e.vae_decode_mode``) — their latencies, and ``e2e.joules_per_image`` over both from
  NVML's energy counter (`harness.measure.power.measure_energy`; "unavailable" without NVML);
- ``e2e.peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` over the instrumented pass, weights included);
- ``correctness`` / ``e2e.output_rel_diff_vs_dense``: the relative difference of one transformer output from
  the reference's on the same inputs — a numerical check with random weights, not image quality. Only a
  non-finite output makes a row "incorrect": sparse methods differ from dense by design.

Settings (the suite's ``[e2e]`` table, or the CLI): see `E2ESettings`. A resolution that does not fit in
memory gives rows "skipped" with the reason; a method that cannot run here, "unavailable".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

import torch

from baselines.base import Method
from baselines.problem import DTYPES, Problem
from baselines.registry import resolve
from harness.apps.e2e.flux_model import (
    build_transformer,
    build_vae,
    diffusers_available,
    flux_problem,
    model_spec,
    random_inputs,
)
from harness.apps.e2e.contenders import (
    REFERENCE,
    Contender,
    identity,
    method_contender,
    processors,
    qkv_layout,
    reference_contender,
)
from harness.apps.e2e.image import Resolution, full_image, on_cuda, warm_up_decode
from harness.apps.e2e.settings import E2ESettings, step_policy
from harness.core.lifecycle import availability_fields, error_fields, release_memory
from harness.core.progress import Progress
from harness.core.schema import Row
from harness.measure.stats import summarize
from harness.measure.timing import TimedFnError, TimingPolicy, time_interleaved, time_once_ms
from kernels.reference import relative_error

OUTPUT_CHECK = "numerical check with random weights, not image quality"
OUTPUT_CHECK_WEIGHTS = "numerical check of one step (real weights, random latents and prompt), not image quality"
PERMUTE_POLICY = TimingPolicy(warmup_ms=10.0, min_samples=5, max_samples=50, budget_ms=100.0, rounds=1)


# ---- measuring one contender ------------------------------------------------------------------------------

def _forward_fn(res: Resolution, order) -> Callable[[], torch.Tensor]:
    @torch.inference_mode()
    def forward() -> torch.Tensor:
        return processors.transformer_forward(res.model, res.inputs, order)

    return forward


def _permute_ms(res: Resolution, order) -> float:
    """Median of: permute latents + RoPE ids into the method's order, restore an output of the same size."""
    def permute_and_restore():
        return order.restore(order.permute(res.inputs).hidden_states)

    samples = time_interleaved({"permute": permute_and_restore}, PERMUTE_POLICY, res.device)["permute"]
    return statistics.median(samples)


def _attention_share(res: Resolution, contender: Contender) -> dict:
    timer = processors.AttentionTimer(res.device)
    processors.install(res.model, contender.make_processors(timer))
    forward = _forward_fn(res, contender.order)
    steps = time_interleaved({contender.name: forward}, step_policy(res.settings.step_repeats), res.device)
    step_ms = steps[contender.name]
    per_forward = timer.collect()[-len(step_ms):]  # drop the warm-up forward
    attention_ms = [sum(layers.values()) for layers in per_forward]
    by_layer = {layer: statistics.median(f[layer] for f in per_forward) for layer in per_forward[0]}
    return {"attention_share": statistics.median(a / s for a, s in zip(attention_ms, step_ms)),
            "attention_ms": statistics.median(attention_ms),
            "instrumented_step_ms": statistics.median(step_ms),
            "attention_ms_by_layer": [by_layer[layer] for layer in sorted(by_layer)],
            "attention_timing": timer.description}


def first_call(res: Resolution, contender: Contender) -> dict:
    """Install ``contender`` alone and run its first forward (its compiles): how long that took, and its
    output against the reference's."""
    processors.install(res.model, contender.make_processors(None))
    forward = _forward_fn(res, contender.order)
    res.progress.step(f"{res.problem.resolution}/e2e/{contender.name}: first call")
    outputs: list[torch.Tensor] = []
    first_call_ms = time_once_ms(lambda: outputs.append(forward()), res.device)
    output = outputs.pop()
    return {"first_call_ms": first_call_ms, "rel_diff": relative_error(output, res.reference_out),
            "max_abs": float((output.float() - res.reference_out.float()).abs().max()),
            "finite": bool(torch.isfinite(output).all())}


def _switched_forward(res: Resolution, contender: Contender, switch) -> Callable[[], torch.Tensor]:
    forward = _forward_fn(res, contender.order)

    def run() -> torch.Tensor:
        switch.current = contender.name
        return forward()

    return run


def interleaved_steps(res: Resolution, contenders: Sequence[Contender]) -> tuple[dict[str, list[float]],
                                                                                  dict[str, dict]]:
    """Step latency of every contender: ``step_repeats`` rounds, one step of each per round in a fresh random
    order, with every contender's processors installed at once behind one `processors.Switch` (a forward
    only sets which one runs). Returns (samples by contender, error fields of a contender whose step raised:
    it is dropped and the others timed again)."""
    failed: dict[str, dict] = {}
    remaining = list(contenders)
    res.progress.step(f"{res.problem.resolution}/e2e: {len(remaining)} contenders' steps, interleaved")
    while remaining:
        switch = processors.Switch()
        layers = {contender.name: contender.make_processors(None) for contender in remaining}
        processors.install(res.model, processors.switch_processors(layers, switch))
        steps = {contender.name: _switched_forward(res, contender, switch) for contender in remaining}
        try:
            samples = time_interleaved(steps, step_policy(res.settings.step_repeats), res.device)
        except TimedFnError as exc:
            failed[exc.name] = error_fields(exc, f"{exc.name}: interleaved step")
            remaining = [contender for contender in remaining if contender.name != exc.name]
            continue
        return {name: samples[name] for name in steps}, failed
    return {}, failed


def finish_contender(res: Resolution, contender: Contender, first: dict, step_samples: list[float]) -> dict:
    """The rest of one contender's measurements (attention share, peak memory, a full image) and its row
    fields after the identity."""
    device, settings = res.device, res.settings
    case = f"{res.problem.resolution}/e2e/{contender.name}"
    check_note = OUTPUT_CHECK if settings.weights is None else OUTPUT_CHECK_WEIGHTS
    summary = summarize(step_samples)
    setup_ms = {**contender.setup_ms, "first_call": first["first_call_ms"]}
    if contender.order is not None:
        setup_ms["permute"] = _permute_ms(res, contender.order)

    res.progress.step(f"{case}: attention share")
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    share = _attention_share(res, contender)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda(device) else None
    e2e = {"text_tokens": res.problem.text_tokens,
           "qkv_layout": qkv_layout(contender, settings.contiguous_qkv),
           "key_order_layers": contender.ordered_layers,
           **share,
           "step_timing": "interleaved with the other contenders of this resolution, one step each per round",
           "permutation": "latents + RoPE ids at entry, output at exit, once per forward"
           if contender.order is not None else "none",
           "peak_memory_bytes": peak,
           "baseline_memory_bytes": res.baseline_bytes,
           "peak_memory_above_baseline_bytes": None if peak is None or res.baseline_bytes is None
           else peak - res.baseline_bytes,
           "output_rel_diff_vs_dense": first["rel_diff"], "output_check": check_note}

    res.progress.step(f"{case}: full image ({settings.steps} steps + decode)")
    processors.install(res.model, contender.make_processors(None))
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    image_fields, energy = full_image(res, contender, summary["median_ms"])
    e2e.update(image_fields)
    if on_cuda(device) and "denoise_ms" in image_fields:
        e2e["peak_memory_image_bytes"] = torch.cuda.max_memory_allocated(device)

    finite = first["finite"]
    row = {
        "backend": contender.backend,
        "status": "ok" if finite else "incorrect",
        "reason": None if finite else "the transformer output is not finite",
        "correctness": {"rel_err": first["rel_diff"], "max_abs_err": first["max_abs"], "tol": None, "passed": finite,
                        "rows_checked": res.problem.image_tokens, "reference": f"{REFERENCE} output, same inputs",
                        "note": check_note},
        "samples_ms": step_samples,
        **{key: summary[key] for key in ("median_ms", "mean_ms", "iqr_ms", "ci95_ms", "n_samples")},
        "setup_ms": setup_ms,
        "density": contender.density,
        "e2e": e2e,
    }
    if energy is not None:
        row["power"] = energy
    return row


# ---- rows -------------------------------------------------------------------------------------------------

def _row(problem: Problem, identity: dict, **fields_) -> dict:
    return Row(kind="e2e", case=f"{problem.resolution}/e2e/{identity['method']}", problem=problem.to_dict(),
               **{**identity, **fields_}).to_dict()


def _derived(fields_: dict, references: Sequence[dict]) -> dict | None:
    """Step and attention speedups against the dense reference rows of the same resolution so far."""
    if fields_.get("status") != "ok" or not fields_.get("median_ms"):
        return None
    refs = [r for r in references if r["status"] == "ok" and r.get("median_ms")]
    if not refs:
        return None
    fastest = min(refs, key=lambda r: r["median_ms"])
    attention = fields_["e2e"].get("attention_ms")
    return {
        "speedup": {r["method"]: r["median_ms"] / fields_["median_ms"] for r in refs},
        "attention_speedup": {r["method"]: r["e2e"]["attention_ms"] / attention for r in refs
                              if attention and r["e2e"].get("attention_ms")},
        "fastest_dense": fastest["method"],
        "fastest_dense_ms": fastest["median_ms"],
    }


def _blocked_reason(settings: E2ESettings, device: torch.device) -> str | None:
    if processors is None:
        return diffusers_available().reason
    if settings.model == "flux-dev" and not on_cuda(device):
        return f"the 12B-parameter Flux model needs a CUDA device (this run is on {device}); use model 'tiny'"
    return None


def _ordered(methods: Sequence[Method]) -> list[Method | None]:
    """The reference (None) first, then the dense references, then the rest, each method once."""
    unique = list({m.name: m for m in methods if m.name != REFERENCE}.values())
    return [None, *[m for m in unique if m.dense_reference], *[m for m in unique if not m.dense_reference]]


def run_e2e_cases(e2e_section: Mapping, results_file, device: torch.device | str) -> list[dict]:
    """Measure every (resolution, method) of ``e2e_section``, appending each row to ``results_file``
    (``add_case``) as soon as it is measured; returns the rows."""
    settings = E2ESettings.from_section(e2e_section)
    return _E2ERun(settings, results_file, torch.device(device)).run()


class _E2ERun:
    """One pass over the resolutions of a settings table, with the model built once."""

    def __init__(self, settings: E2ESettings, results_file, device: torch.device):
        self.settings, self.results_file, self.device = settings, results_file, device
        self.spec = model_spec(settings.model)
        self.problems = [flux_problem(self.spec, w, h, settings.text_tokens, settings.dtype)
                         for w, h in settings.resolutions]
        self.contenders = _ordered([resolve(m) for m in settings.methods])
        self.rows: list[dict] = []
        self.model_info = {"model": settings.model, "dtype": settings.dtype, "weights": settings.weights or
                           f"random N(0, {self.spec.init_std:g}), norm weights N(1, {self.spec.init_std:g})"}

    def emit(self, problem: Problem, method: Method | None, **fields_) -> dict:
        row = _row(problem, identity(method), **fields_)
        row.setdefault("e2e", {})["model"] = self.model_info
        self.results_file.add_case(row)
        self.rows.append(row)
        return row

    def emit_all(self, problems: Sequence[Problem], **fields_) -> None:
        for problem in problems:
            for method in self.contenders:
                self.emit(problem, method, **fields_)

    def run(self) -> list[dict]:
        blocked = _blocked_reason(self.settings, self.device)
        if blocked is not None:
            self.emit_all(self.problems, status="unavailable", reason=blocked)
            return self.rows
        settings, dtype = self.settings, DTYPES[self.settings.dtype]
        self.progress = Progress(total=len(self.problems) * len(self.contenders), label="e2e")
        self.progress.step(f"building {settings.model} with {self.model_info['weights']}")
        try:
            self.model = build_transformer(self.spec, self.device, dtype, settings.weights, seed=settings.seed)
            self.vae = None if settings.skip_denoise else build_vae(self.spec, self.device, dtype, settings.weights,
                                                                    seed=settings.seed + 1)
        except Exception as exc:
            release_memory(self.device)
            self.emit_all(self.problems, **error_fields(exc, "model build"))
            return self.rows
        try:
            for problem in self.problems:
                self.run_resolution(problem)
        finally:
            self.progress.close()
        return self.rows

    def run_resolution(self, problem: Problem) -> None:
        try:
            res = self.resolution(problem)
        except Exception as exc:
            release_memory(self.device)
            self.progress.advance(len(self.contenders), note="skipped")
            self.emit_all([problem], **error_fields(exc, f"{problem.resolution} reference forward"))
            return
        # every contender made ready and its output checked, then their steps interleaved, then the rest of
        # each one's measurements and its row, in the contenders' order (dense references first)
        fields_by_name: dict[str, dict] = {}
        ready: list[tuple[Contender, dict]] = []
        for method in self.contenders:
            name = REFERENCE if method is None else method.name
            refused = None if method is None else availability_fields(method, self.device)
            if refused is not None:
                fields_by_name[name] = refused
                continue
            try:
                contender = (reference_contender(self.model) if method is None
                             else method_contender(method, self.model, problem, self.device,
                                                    self.settings.contiguous_qkv))
                ready.append((contender, first_call(res, contender)))
            except Exception as exc:
                fields_by_name[name] = error_fields(exc, name)
                release_memory(self.device)
        try:
            samples, failed = interleaved_steps(res, [contender for contender, _ in ready])
        except Exception as exc:  # not one contender's step (that is dropped alone): none of them has a step time
            samples, failed = {}, {contender.name: error_fields(exc, "interleaved steps") for contender, _ in ready}
        fields_by_name.update(failed)
        finishing = {contender.name: (contender, first) for contender, first in ready if contender.name in samples}
        references: list[dict] = []
        for method in self.contenders:
            name = REFERENCE if method is None else method.name
            fields_ = fields_by_name.get(name)
            if fields_ is None:
                contender, first = finishing[name]
                try:
                    fields_ = finish_contender(res, contender, first, samples[name])
                except Exception as exc:
                    fields_ = error_fields(exc, name)
            fields_["derived"] = _derived(fields_, references)
            row = self.emit(problem, method, **fields_)
            if row["dense_reference"]:
                references.append(row)
            self.progress.advance(note=row["status"])
        release_memory(self.device)

    def resolution(self, problem: Problem) -> Resolution:
        """Inputs, the reference output and a warm-up VAE decode (whose failure only skips decoding)."""
        self.progress.step(f"{problem.resolution}: reference forward")
        settings, device, model, vae = self.settings, self.device, self.model, self.vae
        inputs = random_inputs(self.spec, problem, device, DTYPES[settings.dtype], seed=settings.seed,
                               guidance_scale=settings.guidance)
        baseline_bytes = torch.cuda.memory_allocated(device) if on_cuda(device) else None
        processors.install(model, processors.diffusers_processors(model))
        with torch.inference_mode():
            reference_out = processors.transformer_forward(model, inputs)
        res = Resolution(settings=settings, spec=self.spec, model=model, vae=vae, device=device, problem=problem,
                         inputs=inputs, reference_out=reference_out, baseline_bytes=baseline_bytes,
                         decode_skip_reason="skip_denoise", progress=self.progress)
        if vae is not None:
            res.decode_mode, res.decode_skip_reason = warm_up_decode(res)
        return res
