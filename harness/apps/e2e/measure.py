"""End-to-end Flux latency with each attention method: one results row (kind "e2e") per resolution and method.

The model is built once per process (24 GB of bf16 weights for FLUX.1-dev) and methods are swapped by
installing their attention processors. Per resolution, first diffusers' untouched model
(``diffusers_sdpa``: FluxAttnProcessor, PyTorch picks the SDPA kernel) gives the reference output; then
every contender (the reference itself, dense references next, then the rest, so that speedups can be
quoted as rows arrive) gets:

- ``samples_ms``: transformer step latency (one forward at sigma 1, CUDA events, `harness.measure.timing`), with
  the once-per-forward token permutation inside it for methods that reorder tokens;
- ``setup_ms``: ``prepare`` (all layers), ``first_call`` (compilation), ``permute`` (permute the latents and
  their RoPE ids, restore the output: median of its own timing), the methods' own setup summed over layers;
- ``e2e.attention_share``: from a separate instrumented pass with CUDA events around every attention call
  inside the processors (attention ms / step ms of the same pass, median over steps);
- a full image: a flow-matching Euler loop of ``steps`` transformer calls on random latents and random
  prompt embeddings (no text encoders), then the VAE decode (diffusers' tiled decode where the full one runs
  out of memory, ``e2e.vae_decode_mode``) — their latencies, and ``e2e.joules_per_image`` over both from
  NVML's energy counter (`harness.measure.power.measure_energy`; "unavailable" without NVML);
- ``e2e.peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` over the step timing, weights included);
- ``correctness`` / ``e2e.output_rel_diff_vs_dense``: the relative difference of one transformer output from
  the reference's on the same inputs — a numerical check with random weights, not image quality. Only a
  non-finite output makes a row "incorrect": sparse methods differ from dense by design.

Settings (the suite's ``[e2e]`` table, or the CLI): see `E2ESettings`. A resolution that does not fit in
memory gives rows "skipped" with the reason; a method that cannot run here, "unavailable".
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch

from baselines.base import Method
from baselines.problem import DTYPES, PIXELS_PER_TOKEN, Problem
from baselines.registry import resolve
from harness.apps.e2e.flux_model import (
    ModelSpec,
    build_transformer,
    build_vae,
    decode,
    denoise,
    diffusers_available,
    flux_problem,
    model_spec,
    random_inputs,
)
from harness.measure.power import measure_energy, nvml_available
from harness.core.progress import Progress
from harness.core.runner import error_row_fields, release_memory  # OOM -> skipped, a refusal -> unavailable
from harness.measure.stats import summarize
from harness.measure.timing import TimingPolicy, time_interleaved, time_once_ms
from kernels.reference import relative_error

# diffusers is optional: without it every case is reported unavailable (processors imports it).
processors = importlib.import_module("harness.apps.e2e.processors") if diffusers_available() else None

REFERENCE = "diffusers_sdpa"
OUTPUT_CHECK = "numerical check with random weights, not image quality"
OUTPUT_CHECK_WEIGHTS = "numerical check of one step (real weights, random latents and prompt), not image quality"
DECODE_MODES = ("full", "tiled")  # tiled: diffusers' tiled VAE decode, tried when the full one runs out of memory
PERMUTE_POLICY = TimingPolicy(warmup_ms=10.0, min_samples=5, max_samples=50, budget_ms=100.0, rounds=1)


def step_policy(repeats: int) -> TimingPolicy:
    """Exactly ``repeats`` timed steps after one warm-up step (the first call ran before).

    A step is long (0.2 s at 1024 px), so the sample count, not a time budget, decides; its working set
    (24 GB of weights) dwarfs L2, so there is nothing to flush.
    """
    return TimingPolicy(warmup_ms=0.0, min_samples=repeats, max_samples=repeats, budget_ms=1.0, rounds=1,
                        l2_flush=False)


# ---- settings ---------------------------------------------------------------------------------------------

def parse_resolution(value: str | int) -> tuple[int, int]:
    """``"1536x1024"`` -> (1536, 1024) pixels, width x height; ``1024`` -> a square."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    parts = str(value).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"resolution {value!r} is not WIDTHxHEIGHT in pixels, e.g. 1024x1024")
    return int(parts[0]), int(parts[1])


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


SETTING_CHECKS = {  # field -> (check, what it must be)
    "steps": (lambda v: _is_int(v, 1), "a positive integer"),
    "step_repeats": (lambda v: _is_int(v, 1), "a positive integer"),
    "text_tokens": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "seed": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "skip_denoise": (lambda v: isinstance(v, bool), "true or false"),
    "contiguous_qkv": (lambda v: isinstance(v, bool), "true or false"),
    "max_denoise_s": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number of seconds"),
    "guidance": (_is_number, "a number"),
    "weights": (lambda v: v is None or isinstance(v, str), "a directory path"),
}


@dataclass(frozen=True)
class E2ESettings:
    resolutions: tuple[tuple[int, int], ...] = ((1024, 1024), (2048, 2048))  # pixels, width x height
    methods: tuple = ("sdpa_cudnn", "hilberta")  # registry specs; the diffusers reference always runs
    steps: int = 28  # denoising steps of the full image
    step_repeats: int = 5  # timed transformer steps (and instrumented steps)
    skip_denoise: bool = False  # step latency only: no full image, no decode, no energy
    max_denoise_s: float | None = None  # skip the full image when steps x step time would exceed this
    weights: str | None = None  # local FLUX.1-dev folder; None = random weights
    model: str = "flux-dev"  # or "tiny" (CPU tests and smoke runs)
    dtype: str = "bfloat16"
    text_tokens: int = 512
    guidance: float = 3.5
    seed: int = 0
    contiguous_qkv: bool = False  # copy q, k, v to contiguous [B, H, L, D] before attention (timed with it)

    @classmethod
    def from_section(cls, section: Mapping) -> E2ESettings:
        """Settings from a suite's ``[e2e]`` table; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"[e2e]: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
        values = dict(section)
        if "resolutions" in values:
            values["resolutions"] = tuple(parse_resolution(r) for r in values["resolutions"])
        if "methods" in values:
            values["methods"] = tuple(values["methods"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name, (check, expected) in SETTING_CHECKS.items():
            if not check(getattr(self, name)):
                raise ValueError(f"[e2e]: {name} must be {expected}, got {getattr(self, name)!r}")
        if not self.resolutions:
            raise ValueError("[e2e]: resolutions is empty")
        for width_px, height_px in self.resolutions:
            Problem.from_pixels(width_px, height_px)  # multiples of 16 px (VAE /8 x 2x2 patch)
        if self.dtype not in DTYPES:
            raise ValueError(f"[e2e]: dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        model_spec(self.model)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "resolutions": [f"{w}x{h}" for w, h in self.resolutions], "methods": list(self.methods)}


# ---- contenders: the reference model and each method's processors ----------------------------------------

@dataclass
class Contender:
    """One attention method made ready for the model at one resolution."""

    name: str
    backend: str | None
    make_processors: Callable[[object | None], dict]  # AttentionTimer | None -> {processor name: processor}
    order: object | None = None  # processors.TokenOrder
    density: dict = field(default_factory=lambda: {"token": 1.0, "block": 1.0})
    setup_ms: dict = field(default_factory=dict)


def _identity(method: Method | None) -> dict:
    """The row fields naming the contender: the diffusers reference for None, else a registry method."""
    if method is None:
        return {"method": REFERENCE, "label": "diffusers FluxAttnProcessor (SDPA)", "family": "dense",
                "params": {}, "dense_reference": True}
    return {"method": method.name, "label": method.label, "family": method.family,
            "params": dict(method.params), "dense_reference": method.dense_reference}


def _reference_contender(model) -> Contender:
    # Timed as diffusers ships it; its instrumented pass uses our processor's SDPA path (the same math,
    # checked against FluxAttnProcessor by the tests) because FluxAttnProcessor has no timing hook.
    return Contender(
        name=REFERENCE, backend="sdpa-default",
        make_processors=lambda timer: processors.diffusers_processors(model) if timer is None
        else processors.method_processors(model, None, timer))


def _qkv_layout(contender_name: str, contiguous_qkv: bool) -> str:
    if contender_name == REFERENCE or not contiguous_qkv:
        return "[B, H, L, D] views of the [B, L, H, D] projections (as diffusers passes SDPA)"
    return "contiguous [B, H, L, D] copies, timed with the attention"


def _method_contender(method: Method, model, problem: Problem, device: torch.device,
                      contiguous_qkv: bool) -> Contender:
    start = time.perf_counter()
    prepared = processors.prepare_layers(method, problem, device, len(processors.layer_names(model)))
    prepare_ms = (time.perf_counter() - start) * 1e3
    runs = [p.run for p in prepared]
    setup_ms = {"prepare": prepare_ms}
    for p in prepared:
        for key, ms in p.setup_ms.items():
            setup_ms[key] = setup_ms.get(key, 0.0) + ms
    return Contender(
        name=method.name, backend=prepared[0].backend,
        make_processors=lambda timer: processors.method_processors(model, runs, timer, contiguous_qkv),
        order=processors.TokenOrder.from_image_order(prepared[0].image_order, device),
        density={"token": statistics.fmean(p.token_density for p in prepared),
                 "block": statistics.fmean(p.block_density for p in prepared)},
        setup_ms=setup_ms)


# ---- measuring one contender ------------------------------------------------------------------------------

@dataclass
class Resolution:
    """What every contender at one resolution shares."""

    settings: E2ESettings
    spec: ModelSpec
    model: object
    vae: object | None
    device: torch.device
    problem: Problem
    inputs: object  # FluxInputs
    reference_out: torch.Tensor
    baseline_bytes: int | None  # allocated before any step: weights (transformer and VAE) and inputs
    decode_skip_reason: str | None
    progress: Progress
    decode_mode: str | None = None  # one of DECODE_MODES

    @property
    def width_px(self) -> int:
        return self.problem.width * PIXELS_PER_TOKEN

    @property
    def height_px(self) -> int:
        return self.problem.height * PIXELS_PER_TOKEN


def _cuda(device: torch.device) -> bool:
    return device.type == "cuda"


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


def _full_image(res: Resolution, contender: Contender, step_ms: float) -> tuple[dict, dict | None]:
    """Denoising loop + VAE decode latencies (``e2e`` fields) and the energy per image (``power``)."""
    settings = res.settings
    if settings.skip_denoise:  # asked for: the settings in results.json say so
        return {}, None
    calls = 1 if _energy_unavailable(res.device) else 2  # measure_energy sizes its window with one call
    estimate_s = calls * settings.steps * step_ms / 1e3
    if settings.max_denoise_s is not None and estimate_s > settings.max_denoise_s:
        reason = f"estimated {estimate_s:.0f} s (> max_denoise_s {settings.max_denoise_s:g})"
        return {"denoise": {"status": "skipped", "reason": reason}}, None

    samples: dict[str, list[float]] = {"denoise_ms": [], "vae_decode_ms": []}
    latents: list[torch.Tensor] = []  # the last image's latents, for the decode

    def run_denoise() -> None:
        latents[:] = [denoise(lambda inputs: processors.transformer_forward(res.model, inputs, contender.order),
                              res.inputs, settings.steps)]

    @torch.inference_mode()
    def generate_image() -> None:
        samples["denoise_ms"].append(time_once_ms(run_denoise, res.device))
        if res.decode_skip_reason is None:
            samples["vae_decode_ms"].append(time_once_ms(
                lambda: decode(res.vae, latents[0], res.height_px, res.width_px), res.device))

    energy = _measure_energy(generate_image, res.device)
    fields_ = {"steps": settings.steps, "denoise_ms": statistics.median(samples["denoise_ms"]),
               "denoise_samples_ms": samples["denoise_ms"]}
    if res.decode_skip_reason is None:
        fields_["vae_decode_ms"] = statistics.median(samples["vae_decode_ms"])
        fields_["vae_decode_samples_ms"] = samples["vae_decode_ms"]
        fields_["vae_decode_mode"] = res.decode_mode
        fields_["image_ms"] = fields_["denoise_ms"] + fields_["vae_decode_ms"]
    else:
        fields_["vae_decode"] = {"status": "skipped", "reason": res.decode_skip_reason}
    if energy.get("joules_per_call") is not None:
        fields_["joules_per_image"] = energy["joules_per_call"]
        fields_["energy_covers"] = f"{settings.steps} transformer steps" + (
            " + VAE decode" if res.decode_skip_reason is None else "")
    return fields_, energy


def _energy_unavailable(device: torch.device) -> str | None:
    if not _cuda(device):
        return f"energy needs a CUDA device (this run is on {device})"
    avail = nvml_available()
    return None if avail else avail.reason


def _measure_energy(fn: Callable[[], None], device: torch.device) -> dict:
    reason = _energy_unavailable(device)
    if reason is not None:
        fn()
        return {"status": "unavailable", "reason": reason}
    return measure_energy(fn, device, min_window_s=1.0)


def measure_contender(res: Resolution, contender: Contender) -> dict:
    """All measurements of one contender at one resolution: the row fields after the identity."""
    device, settings = res.device, res.settings
    case = f"{res.problem.resolution}/e2e/{contender.name}"
    check_note = OUTPUT_CHECK if settings.weights is None else OUTPUT_CHECK_WEIGHTS
    processors.install(res.model, contender.make_processors(None))
    forward = _forward_fn(res, contender.order)

    res.progress.step(f"{case}: first call")
    outputs: list[torch.Tensor] = []
    first_call_ms = time_once_ms(lambda: outputs.append(forward()), device)
    output = outputs.pop()
    rel_diff = relative_error(output, res.reference_out)
    max_abs = float((output.float() - res.reference_out.float()).abs().max())
    finite = bool(torch.isfinite(output).all())
    del output

    res.progress.step(f"{case}: step latency")
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    step_samples = time_interleaved({contender.name: forward}, step_policy(settings.step_repeats), device)
    step_samples = step_samples[contender.name]
    peak = torch.cuda.max_memory_allocated(device) if _cuda(device) else None
    summary = summarize(step_samples)

    setup_ms = {**contender.setup_ms, "first_call": first_call_ms}
    if contender.order is not None:
        setup_ms["permute"] = _permute_ms(res, contender.order)

    res.progress.step(f"{case}: attention share")
    e2e = {"text_tokens": res.problem.text_tokens,
           "qkv_layout": _qkv_layout(contender.name, settings.contiguous_qkv),
           **_attention_share(res, contender),
           "permutation": "latents + RoPE ids at entry, output at exit, once per forward"
           if contender.order is not None else "none",
           "peak_memory_bytes": peak,
           "baseline_memory_bytes": res.baseline_bytes,
           "peak_memory_above_baseline_bytes": None if peak is None or res.baseline_bytes is None
           else peak - res.baseline_bytes,
           "output_rel_diff_vs_dense": rel_diff, "output_check": check_note}

    res.progress.step(f"{case}: full image ({settings.steps} steps + decode)")
    processors.install(res.model, contender.make_processors(None))
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    image_fields, energy = _full_image(res, contender, summary["median_ms"])
    e2e.update(image_fields)
    if _cuda(device) and "denoise_ms" in image_fields:
        e2e["peak_memory_image_bytes"] = torch.cuda.max_memory_allocated(device)

    row = {
        "backend": contender.backend,
        "status": "ok" if finite else "incorrect",
        "reason": None if finite else "the transformer output is not finite",
        "correctness": {"rel_err": rel_diff, "max_abs_err": max_abs, "tol": None, "passed": finite,
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
    return {"kind": "e2e", "case": f"{problem.resolution}/e2e/{identity['method']}", **identity,
            "backend": None, "problem": problem.to_dict(), "status": "ok", "reason": None, **fields_}


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
    if settings.model == "flux-dev" and not _cuda(device):
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
        row = _row(problem, _identity(method), **fields_)
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
            self.emit_all(self.problems, **error_row_fields(exc, "model build"))
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
            self.emit_all([problem], **error_row_fields(exc, f"{problem.resolution} reference forward"))
            return
        references: list[dict] = []
        for method in self.contenders:
            name = REFERENCE if method is None else method.name
            self.progress.step(f"{problem.resolution}/e2e/{name}")
            avail = None if method is None else method.availability(self.device)
            if avail is not None and not avail:
                self.emit(problem, method, status="unavailable", reason=avail.reason)
                self.progress.advance(note="unavailable")
                continue
            try:
                contender = (_reference_contender(self.model) if method is None
                             else _method_contender(method, self.model, problem, self.device,
                                                    self.settings.contiguous_qkv))
                fields_ = measure_contender(res, contender)
            except Exception as exc:
                fields_ = error_row_fields(exc, name)
            finally:
                release_memory(self.device)
            fields_["derived"] = _derived(fields_, references)
            row = self.emit(problem, method, **fields_)
            if row["dense_reference"]:
                references.append(row)
            self.progress.advance(note=row["status"])

    def resolution(self, problem: Problem) -> Resolution:
        """Inputs, the reference output and a warm-up VAE decode (whose failure only skips decoding)."""
        self.progress.step(f"{problem.resolution}: reference forward")
        settings, device, model, vae = self.settings, self.device, self.model, self.vae
        inputs = random_inputs(self.spec, problem, device, DTYPES[settings.dtype], seed=settings.seed,
                               guidance_scale=settings.guidance)
        baseline_bytes = torch.cuda.memory_allocated(device) if _cuda(device) else None
        processors.install(model, processors.diffusers_processors(model))
        with torch.inference_mode():
            reference_out = processors.transformer_forward(model, inputs)
        res = Resolution(settings=settings, spec=self.spec, model=model, vae=vae, device=device, problem=problem,
                         inputs=inputs, reference_out=reference_out, baseline_bytes=baseline_bytes,
                         decode_skip_reason="skip_denoise", progress=self.progress)
        if vae is not None:
            res.decode_mode, res.decode_skip_reason = _warm_up_decode(res)
        return res


def _warm_up_decode(res: Resolution) -> tuple[str | None, str | None]:
    """``(mode, None)`` after one decode (cuDNN picks its convolution algorithms here): ``full``, or ``tiled``
    (diffusers' tiled decode) when the full decode runs out of memory; ``(None, reason)`` when both do."""
    reasons = []
    for mode in DECODE_MODES:
        if mode == "tiled":
            res.vae.enable_tiling()
        else:
            res.vae.disable_tiling()
        try:
            with torch.inference_mode():
                decode(res.vae, res.inputs.hidden_states, res.height_px, res.width_px)
            return mode, None
        except torch.OutOfMemoryError as exc:
            reasons.append(f"{mode}: {str(exc).splitlines()[0]}")
            release_memory(res.device)
    return None, f"VAE decode out of memory ({'; '.join(reasons)})"
