"""The Flux.1-dev model for end-to-end runs: built with random weights (or loaded from disk), its inputs, sampling.

Nothing here downloads anything. `build_transformer` / `build_vae` construct the model on the meta device,
materialize it on the target device in the target dtype and draw every parameter from a normal distribution
(std 0.02 for FLUX.1-dev; normalization weights around 1), so a 12B-parameter model costs its 24 GB of bf16 weights and no
more. With ``weights_dir`` they load real weights with ``from_pretrained(..., local_files_only=True)`` and
``HF_HUB_OFFLINE=1`` instead. ``tiny`` is a CPU-sized model of the same architecture for tests.

Inputs follow FluxPipeline without its text encoders: packed random latents ``[B, H*W, 4*latent_ch]`` over
the token grid (pixels / 16), random prompt embeddings ``[B, T_txt, joint_attention_dim]``, pooled
projections, text ids (zeros) and image ids ``(0, row, col)``. `denoise` is a flow-matching Euler loop with
FluxPipeline's resolution-dependent sigma shift; `decode` unpacks the latents and runs the VAE decoder.
diffusers is an optional dependency: probe `diffusers_available()` before calling anything that builds.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from baselines.base import Availability
from baselines.problem import PIXELS_PER_TOKEN, Problem

# Never touch the network: the hub reads this when it is first imported (diffusers imports it).
os.environ["HF_HUB_OFFLINE"] = "1"

INIT_STD = 0.02

FLUX_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_DEV_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
    "force_upcast": True,
}


def tiny_config() -> dict:
    """Flux's architecture at CPU-test size: 2 double + 2 single blocks, 2 heads of dim 16 (RoPE 4+6+6)."""
    return {**FLUX_DEV_TRANSFORMER, "in_channels": 16, "num_layers": 2, "num_single_layers": 2,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "pooled_projection_dim": 16, "axes_dims_rope": (4, 6, 6)}


def tiny_vae_config() -> dict:
    """A VAE with Flux's /8 downsampling (four blocks), 4 latent channels and a few channels per block."""
    return {**FLUX_DEV_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1,
            "latent_channels": 4, "norm_num_groups": 4, "sample_size": 64}


@dataclass(frozen=True)
class ModelSpec:
    """A named transformer + VAE configuration pair and the std of its random weights."""

    transformer: dict
    vae: dict
    # ~1/sqrt(hidden size), so activations keep their scale through each linear layer and attention
    # matters to the output: 0.02 for Flux's 3072, larger for a toy width.
    init_std: float = INIT_STD

    def __post_init__(self) -> None:
        rope, head_dim = self.transformer["axes_dims_rope"], self.transformer["attention_head_dim"]
        if sum(rope) != head_dim:
            raise ValueError(f"axes_dims_rope {tuple(rope)} must sum to attention_head_dim {head_dim}")
        packed = 4 * self.vae["latent_channels"]
        if self.transformer["in_channels"] != packed:
            raise ValueError(f"transformer in_channels {self.transformer['in_channels']} must be 4 x the VAE's "
                             f"latent channels ({packed}): a token is a 2x2 patch of latent cells")

    @property
    def num_attention_layers(self) -> int:
        return self.transformer["num_layers"] + self.transformer["num_single_layers"]


MODEL_SPECS = {
    "flux-dev": ModelSpec(FLUX_DEV_TRANSFORMER, FLUX_DEV_VAE),
    "tiny": ModelSpec(tiny_config(), tiny_vae_config(), init_std=0.18),  # hidden size 32
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_SPECS)}")
    return MODEL_SPECS[name]


@lru_cache(maxsize=1)
def diffusers_available() -> Availability:
    """Whether diffusers (with FluxTransformer2DModel and AutoencoderKL) can be imported here."""
    try:
        diffusers = importlib.import_module("diffusers")
        diffusers.FluxTransformer2DModel, diffusers.AutoencoderKL  # noqa: B018 - probing the attributes
    except Exception as exc:  # ImportError, or a broken install raising anything at import time
        return Availability(False, f"diffusers unavailable: {type(exc).__name__}: {exc}")
    return Availability(True, f"diffusers {diffusers.__version__}")


# ---- weights ----------------------------------------------------------------------------------------------

def norm_types() -> tuple[type, ...]:
    """The normalization layers of Flux and its VAE, whose weights start around 1."""
    from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm

    return (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, DiffusersRMSNorm)


@torch.no_grad()
def init_random_(model: torch.nn.Module, seed: int = 0, std: float = INIT_STD) -> int:
    """Draw every parameter of ``model`` in place: N(0, std); normalization weights N(1, std).

    Norm weights are not exactly 1 so that a processor applying the wrong norm (norm_q for norm_added_q)
    changes the output. Returns the number of parameters drawn (all of them: to_empty leaves garbage).
    """
    norms = norm_types()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    drawn = 0
    for module in model.modules():
        is_norm = isinstance(module, norms)
        for name, param in module.named_parameters(recurse=False):
            mean = 1.0 if is_norm and name == "weight" else 0.0
            param.normal_(mean, std, generator=gen)
            drawn += param.numel()
    total = sum(p.numel() for p in model.parameters())
    if drawn != total:
        raise RuntimeError(f"initialized {drawn} of {total} parameters (shared parameters?)")
    return drawn


def _random_model(cls, config: dict, device: torch.device, dtype: torch.dtype, seed: int, std: float):
    with torch.device("meta"):
        model = cls(**config)
    # Casting the (still empty) meta parameters is intended; ModelMixin.to would warn about it, nn.Module.to not.
    model = torch.nn.Module.to(model, dtype=dtype).to_empty(device=device)
    init_random_(model, seed=seed, std=std)
    return model.eval().requires_grad_(False)


def _weights_folder(weights_dir: Path, subfolder: str, allow_root: bool) -> Path | None:
    """``DIR/<subfolder>`` of a pipeline snapshot; with ``allow_root``, ``DIR`` itself when it holds one model."""
    candidates = (weights_dir / subfolder, weights_dir) if allow_root else (weights_dir / subfolder,)
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def _load_model(cls, folder: Path, device: torch.device, dtype: torch.dtype):
    model = cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    return model.to(device).eval().requires_grad_(False)


def build_transformer(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype,
                      weights_dir: str | Path | None = None, seed: int = 0):
    """FluxTransformer2DModel with random weights, or the weights in ``weights_dir`` (local files only).

    ``weights_dir`` is a FLUX.1-dev snapshot (its ``transformer/`` is used) or a transformer folder.
    """
    from diffusers import FluxTransformer2DModel

    device = torch.device(device)
    if weights_dir is None:
        return _random_model(FluxTransformer2DModel, spec.transformer, device, dtype, seed, spec.init_std)
    folder = _weights_folder(Path(weights_dir), "transformer", allow_root=True)
    if folder is None:
        raise ValueError(f"no transformer weights in {weights_dir}: expected transformer/config.json or "
                         "config.json there")
    return _load_model(FluxTransformer2DModel, folder, device, dtype)


def build_vae(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype,
              weights_dir: str | Path | None = None, seed: int = 1):
    """AutoencoderKL (Flux VAE configuration): ``weights_dir/vae`` when present, else random weights.

    Decode latency does not depend on the weights' values, so a transformer-only folder gets a random VAE.
    """
    from diffusers import AutoencoderKL

    device = torch.device(device)
    folder = None if weights_dir is None else _weights_folder(Path(weights_dir), "vae", allow_root=False)
    if folder is None:
        return _random_model(AutoencoderKL, spec.vae, device, dtype, seed, spec.init_std)
    return _load_model(AutoencoderKL, folder, device, dtype)


# ---- inputs -----------------------------------------------------------------------------------------------

def flux_problem(spec: ModelSpec, width_px: int, height_px: int, text_tokens: int, dtype: str,
                 batch: int = 1) -> Problem:
    """The attention problem of one transformer forward at this resolution (layer 0)."""
    cfg = spec.transformer
    return Problem.from_pixels(width_px, height_px, text_tokens=text_tokens, batch=batch,
                               heads=cfg["num_attention_heads"], head_dim=cfg["attention_head_dim"], dtype=dtype)


@dataclass(frozen=True)
class FluxInputs:
    """One transformer forward's inputs, image tokens in row-major order."""

    hidden_states: torch.Tensor  # [B, H*W, in_channels] packed latents
    encoder_hidden_states: torch.Tensor  # [B, T_txt, joint_attention_dim]
    pooled_projections: torch.Tensor  # [B, pooled_projection_dim]
    timestep: torch.Tensor  # [B], sigma in [0, 1] (the model multiplies by 1000)
    guidance: torch.Tensor | None  # [B] guidance scale, for guidance-distilled models
    img_ids: torch.Tensor  # [H*W, 3] (0, row, col)
    txt_ids: torch.Tensor  # [T_txt, 3] zeros

    def model_kwargs(self) -> dict:
        return {"hidden_states": self.hidden_states, "encoder_hidden_states": self.encoder_hidden_states,
                "pooled_projections": self.pooled_projections, "timestep": self.timestep,
                "guidance": self.guidance, "img_ids": self.img_ids, "txt_ids": self.txt_ids}

    def with_latents(self, latents: torch.Tensor, sigma: float) -> FluxInputs:
        return replace(self, hidden_states=latents, timestep=torch.full_like(self.timestep, sigma))


def image_ids(height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """``[H*W, 3]`` RoPE ids (0, row, col) in row-major order, as FluxPipeline builds them."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


def random_inputs(spec: ModelSpec, problem: Problem, device: torch.device | str, dtype: torch.dtype,
                  seed: int = 0, guidance_scale: float = 3.5) -> FluxInputs:
    """Random latents and prompt embeddings of the right shapes (no text encoders), sigma = 1."""
    cfg = spec.transformer
    gen = torch.Generator(device=device).manual_seed(seed)
    batch = problem.batch

    def randn(*shape):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    guidance = torch.full((batch,), guidance_scale, device=device, dtype=torch.float32)
    return FluxInputs(
        hidden_states=randn(batch, problem.image_tokens, cfg["in_channels"]),
        encoder_hidden_states=randn(batch, problem.text_tokens, cfg["joint_attention_dim"]),
        pooled_projections=randn(batch, cfg["pooled_projection_dim"]),
        timestep=torch.ones(batch, device=device, dtype=torch.float32),
        guidance=guidance if cfg["guidance_embeds"] else None,
        img_ids=image_ids(problem.height, problem.width, device),
        txt_ids=torch.zeros(problem.text_tokens, 3, device=device),
    )


# ---- sampling and decoding --------------------------------------------------------------------------------

def flow_sigmas(steps: int, image_tokens: int) -> list[float]:
    """FluxPipeline's schedule: linspace(1, 1/steps) time-shifted by mu(image_tokens), then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # mu grows linearly from 0.5 at 256 tokens to 1.15 at 4096 (FluxPipeline's calculate_shift defaults)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (image_tokens - 256)
    base = [1.0 - i * (1.0 - 1.0 / steps) / max(steps - 1, 1) for i in range(steps)]
    return [math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0)) for s in base] + [0.0]


ModelCall = Callable[[FluxInputs], torch.Tensor]


def denoise(model_call: ModelCall, inputs: FluxInputs, steps: int) -> torch.Tensor:
    """A flow-matching Euler loop of ``steps`` transformer calls from ``inputs.hidden_states``."""
    sigmas = flow_sigmas(steps, inputs.hidden_states.shape[1])
    latents = inputs.hidden_states
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        velocity = model_call(inputs.with_latents(latents, sigma))
        latents = latents + (sigma_next - sigma) * velocity
    return latents


def unpack_latents(latents: torch.Tensor, height_px: int, width_px: int) -> torch.Tensor:
    """``[B, H*W, 4C]`` tokens (2x2 patches) -> ``[B, C, height_px/8, width_px/8]`` latent image."""
    batch, tokens, packed = latents.shape
    rows, cols = height_px // PIXELS_PER_TOKEN, width_px // PIXELS_PER_TOKEN
    if tokens != rows * cols or packed % 4:
        raise ValueError(f"latents {tuple(latents.shape)} do not match a {width_px}x{height_px} image")
    grid = latents.view(batch, rows, cols, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, packed // 4, rows * 2, cols * 2)


def decode(vae, latents: torch.Tensor, height_px: int, width_px: int) -> torch.Tensor:
    """Image ``[B, 3, height_px, width_px]`` from packed latents, scaled and shifted as FluxPipeline does."""
    image_latents = unpack_latents(latents, height_px, width_px).to(vae.dtype)
    shift = vae.config.shift_factor or 0.0
    image_latents = image_latents / vae.config.scaling_factor + shift
    return vae.decode(image_latents, return_dict=False)[0]
