"""The full image of an end-to-end case: the denoising loop, the VAE decode (tiled when the full decode runs
out of memory) and the energy per image from NVML, and what every contender at one resolution shares.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from baselines.problem import PIXELS_PER_TOKEN, Problem
from harness.apps.e2e.contenders import Contender, processors
from harness.apps.e2e.flux_model import ModelSpec, decode, denoise
from harness.apps.e2e.settings import E2ESettings
from harness.core.lifecycle import release_memory
from harness.core.progress import Progress
from harness.measure.power import measure_energy, nvml_available
from harness.measure.timing import time_once_ms

DECODE_MODES = ("full", "tiled")  # tiled: diffusers' tiled VAE decode, tried when the full one runs out of memory


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


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def full_image(res: Resolution, contender: Contender, step_ms: float) -> tuple[dict, dict | None]:
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
    if not on_cuda(device):
        return f"energy needs a CUDA device (this run is on {device})"
    avail = nvml_available()
    return None if avail else avail.reason


def _measure_energy(fn: Callable[[], None], device: torch.device) -> dict:
    reason = _energy_unavailable(device)
    if reason is not None:
        fn()
        return {"status": "unavailable", "reason": reason}
    return measure_energy(fn, device, min_window_s=1.0)


def warm_up_decode(res: Resolution) -> tuple[str | None, str | None]:
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
