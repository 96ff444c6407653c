"""Neighbourhood attention (NATTEN semantics) on the row-major image grid, text dense both ways.

Each image query attends the ``k x k`` image tokens around it, the window clamped at the borders so it
always holds k*k tokens (`baselines.window_masks.neighborhood_mask`), plus every text key; text queries
attend every key. Implementations (``impl``):

- ``natten``: NATTEN's fused kernel, ``natten.na2d`` on heads-last [B, H, W, heads, D] image tensors
  with the text as additional keys/values, plus one SDPA call for the text query rows. Needs natten
  built with libnatten (its CUDA kernels) and a GPU.
- ``flex``: the same mask through FlexAttention.
- ``auto`` (default): natten when it can run here, else flex (``extra["fallback"]`` says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch
import torch.nn.functional as F

from baselines.base import Availability, PreparedAttention
from baselines.flex_common import flex_probe, prepare_flex
from baselines.problem import Problem
from baselines.registry import (
    MethodUnavailable,
    Param,
    odd_int,
    one_of,
    register_family,
)
from baselines.window_masks import neighborhood_mask, window_allowed_pairs

IMPLS = ("auto", "natten", "flex")
PROBE_GRID = 16  # image side of the tiny build-time natten call


@cache
def natten_status() -> tuple[object | None, str]:
    """(the natten module, "natten X.Y") when its CUDA kernels are importable, else (None, why not)."""
    try:
        import natten
    except Exception as exc:  # ImportError, or a libnatten built against another torch
        return None, f"natten is not importable ({type(exc).__name__}: {exc})"
    version = getattr(natten, "__version__", "?")
    if not getattr(natten, "HAS_LIBNATTEN", False):
        return None, f"natten {version} has no libnatten (a Flex-only build)"
    return natten, f"natten {version}"


def _natten_availability(device: torch.device) -> Availability:
    natten, reason = natten_status()
    if natten is None:
        return Availability(False, reason)
    if device.type != "cuda" or not torch.cuda.is_available():
        return Availability(False, f"{reason} runs on CUDA only")
    return Availability(True, f"{reason} (na2d)")


def _probe(device: torch.device, kernel: int, impl: str) -> Availability:
    if impl == "natten":
        return _natten_availability(device)
    flex = flex_probe(device)
    if impl == "flex" or not flex:
        return flex
    natten = _natten_availability(device)
    return natten if natten else Availability(True, f"{flex.reason}; natten fallback: {natten.reason}")


def _heads_last_grid(x: torch.Tensor, text_tokens: int, height: int, width: int) -> torch.Tensor:
    """[B, heads, T + H*W, D] -> the image part as [B, H, W, heads, D] (a copy: NATTEN's layout)."""
    batch, heads, _, head_dim = x.shape
    return x[:, :, text_tokens:].transpose(1, 2).reshape(batch, height, width, heads, head_dim)


def natten_forward(natten, q, k, v, height: int, width: int, text_tokens: int, kernel: int) -> torch.Tensor:
    """Neighbourhood attention of q, k, v [B, heads, L, D] (``[text | row-major image]``) through NATTEN."""
    batch, heads, _, head_dim = q.shape
    text_kv = {}
    if text_tokens:
        text_kv = {"additional_keys": k[:, :, :text_tokens].transpose(1, 2).contiguous(),
                   "additional_values": v[:, :, :text_tokens].transpose(1, 2).contiguous()}
    image = natten.na2d(_heads_last_grid(q, text_tokens, height, width),
                        _heads_last_grid(k, text_tokens, height, width),
                        _heads_last_grid(v, text_tokens, height, width),
                        kernel_size=(kernel, kernel), **text_kv)
    image = image.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
    if not text_tokens:
        return image
    text = F.scaled_dot_product_attention(q[:, :, :text_tokens], k, v)  # text rows: dense
    return torch.cat([text, image], dim=2)


def _build_natten(problem: Problem, device: torch.device, kernel: int) -> PreparedAttention:
    natten, version = natten_status()
    side = max(PROBE_GRID, kernel)
    tiny = torch.randn(1, 2, 8 + side * side, problem.head_dim, device=device, dtype=problem.torch_dtype)
    try:  # NATTEN refuses some dtypes / head dims per GPU: that makes the method unavailable, not failed
        natten_forward(natten, tiny, tiny, tiny, side, side, 8, kernel)
    except Exception as exc:
        raise MethodUnavailable(f"{version} refused {problem.dtype} head_dim={problem.head_dim}: "
                                f"{type(exc).__name__}: {exc}") from None
    mask = neighborhood_mask(problem.height, problem.width, problem.text_tokens, kernel)

    def run(q, k, v):
        return natten_forward(natten, q, k, v, problem.height, problem.width, problem.text_tokens, kernel)

    return PreparedAttention(
        method="na", problem=problem, backend="natten-na2d+sdpa-text", run=run, image_order=None,
        mask_rows=mask.rows, allowed_pairs=_allowed_pairs(problem, kernel),
        computed_pairs=_allowed_pairs(problem, kernel),  # NATTEN's tiling is internal: token-level count
        extra={"mask": mask.name, "natten": version, "computed_pairs_is_token_level": True})


def _allowed_pairs(problem: Problem, kernel: int) -> int:
    return window_allowed_pairs(problem.height, problem.width, problem.text_tokens, (1, 1), (kernel, kernel))


@register_family("na", category="neighborhood",
                 params={"kernel": Param(17, "window side k in tokens, an odd positive int", odd_int),
                         "impl": Param("auto", " | ".join(IMPLS), one_of(*IMPLS))},
                 method_name=lambda p: f"na_k{p['kernel']}" + ("" if p["impl"] == "auto" else f"_{p['impl']}"),
                 label=lambda p: f"NA {p['kernel']}x{p['kernel']}" + ("" if p["impl"] == "auto" else f" ({p['impl']})"),
                 probe=_probe)
def build_na(problem: Problem, device: torch.device, *, kernel: int, impl: str) -> PreparedAttention:
    """Neighbourhood attention: NATTEN where it can run, else FlexAttention with the same mask."""
    if kernel > min(problem.height, problem.width):
        raise ValueError(f"NA kernel {kernel} exceeds the {problem.height}x{problem.width} token grid")
    natten_ok = _natten_availability(device)
    if impl == "natten" or (impl == "auto" and natten_ok):
        return _build_natten(problem, device, kernel)
    mask = neighborhood_mask(problem.height, problem.width, problem.text_tokens, kernel)
    extra: Mapping = {} if impl == "flex" else {"fallback": f"flex instead of natten: {natten_ok.reason}"}
    return prepare_flex("na", problem, device, mask, allowed_pairs=_allowed_pairs(problem, kernel), extra=extra)
