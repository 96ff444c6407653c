"""Dense attention baselines: PyTorch SDPA forced to one backend, FlexAttention dense, the flash_attn package.

SDPA methods pin exactly one backend with `torch.nn.attention.sdpa_kernel`; if that backend refuses a
problem (dtype, head dim, GPU), the method is *unavailable* with PyTorch's own reason, never silently
replaced by another backend (torch >= 2.10 prefers cuDNN on Hopper, so an unforced call says little).
Availability is probed with a tiny call on the device; `build` probes again with the problem's dtype and
head dim and raises `MethodUnavailable` if the backend refuses it.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from baselines.base import Availability, PreparedAttention
from baselines.flex_common import flex_probe, prepare_flex
from baselines.problem import Problem
from baselines.registry import MethodUnavailable, Param, one_of, register_family

PROBE_SEQ_LEN = 256  # tiny: enough for every backend's minimum tile


@dataclass(frozen=True)
class SdpaVariant:
    backend: SDPBackend
    tag: str  # PreparedAttention.backend
    label: str
    device_type: str  # the one device type this variant is meant for
    dense_reference: bool


SDPA_VARIANTS = {
    "sdpa_flash": SdpaVariant(SDPBackend.FLASH_ATTENTION, "sdpa-flash", "SDPA FlashAttention-2", "cuda", True),
    "sdpa_cudnn": SdpaVariant(SDPBackend.CUDNN_ATTENTION, "sdpa-cudnn", "SDPA cuDNN", "cuda", True),
    "sdpa_efficient": SdpaVariant(SDPBackend.EFFICIENT_ATTENTION, "sdpa-efficient", "SDPA mem-efficient",
                                  "cuda", False),
    # CPU smoke runs only: the math backend materializes the L x L scores.
    "sdpa_math": SdpaVariant(SDPBackend.MATH, "sdpa-math", "SDPA math (CPU)", "cpu", False),
}


def _no_cuda_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"needs a CUDA device, got {device}"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _try_sdpa(variant: SdpaVariant, device: torch.device, dtype: torch.dtype, head_dim: int) -> Availability:
    """Run one tiny forced call; a refusal becomes the reason (PyTorch explains it in warnings)."""
    q = torch.randn(1, 2, PROBE_SEQ_LEN, head_dim, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([variant.backend]):
                F.scaled_dot_product_attention(q, q, q)
        except RuntimeError as exc:
            why = "; ".join(str(w.message).strip() for w in caught) or str(exc)
            return Availability(False, f"{variant.tag} refused {str(dtype).removeprefix('torch.')} "
                                       f"head_dim={head_dim}: {why}")
    return Availability(True, variant.tag)


def _sdpa_probe(variant: SdpaVariant):
    def probe(device: torch.device) -> Availability:
        if variant.device_type == "cpu":
            if device.type != "cpu":
                return Availability(False, "CPU smoke-test method (materializes the L x L scores)")
            return _try_sdpa(variant, device, torch.float32, 64)
        reason = _no_cuda_reason(device)
        if reason:
            return Availability(False, reason)
        return _try_sdpa(variant, device, torch.bfloat16, 128)  # Flux's dtype and head dim

    return probe


def _sdpa_build(family: str, variant: SdpaVariant):
    def build(problem: Problem, device: torch.device) -> PreparedAttention:
        """Dense SDPA forced to one backend."""
        avail = _try_sdpa(variant, device, problem.torch_dtype, problem.head_dim)
        if not avail:
            raise MethodUnavailable(avail.reason)
        backends = [variant.backend]

        def run(q, k, v):
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v)

        return _dense_prepared(family, problem, variant.tag, run)

    return build


def _dense_prepared(method: str, problem: Problem, backend: str, run) -> PreparedAttention:
    pairs = problem.seq_len**2
    return PreparedAttention(method=method, problem=problem, backend=backend, run=run, image_order=None,
                             mask_rows=None, allowed_pairs=pairs, computed_pairs=pairs)


def _register_sdpa_variants() -> None:
    for family, variant in SDPA_VARIANTS.items():
        register_family(family, category="dense", label=lambda _p, v=variant: v.label, probe=_sdpa_probe(variant),
                        dense_reference=variant.dense_reference)(_sdpa_build(family, variant))


_register_sdpa_variants()


# ---- FlexAttention, dense -----------------------------------------------------------------------------

@register_family("flex_dense", category="dense", label=lambda _p: "FlexAttention dense",
                 probe=lambda device: flex_probe(device), dense_reference=True)
def build_flex_dense(problem: Problem, device: torch.device) -> PreparedAttention:
    """FlexAttention without a mask (compiled on CUDA)."""
    return prepare_flex("flex_dense", problem, device, None)


# ---- the flash_attn package (FA2) and FlashAttention-3 --------------------------------------------------

# Where each FlashAttention generation's `flash_attn_func` lives, in order of preference.
FLASH_ATTN_MODULES = {
    "3": ("flash_attn_interface", "flash_attn_3.flash_attn_interface", "flash_attn_3"),
    "2": ("flash_attn",),
}
FLASH_ATTN_DTYPES = (torch.float16, torch.bfloat16)


def _flash_attn_func(version: str):
    """(flash_attn_func, module name) of that generation, or (None, why not)."""
    errors = []
    for module_name in FLASH_ATTN_MODULES[version]:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or a binary built against another torch
            errors.append(f"{module_name}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(module, "flash_attn_func"):
            return module.flash_attn_func, module_name
        errors.append(f"{module_name} has no flash_attn_func")
    return None, "; ".join(errors)


def _pick_flash_attn(version: str, device: torch.device):
    """(func, tag) of the requested generation ('auto': FA3 on Hopper when installed, else FA2), or
    (None, reason)."""
    reason = _no_cuda_reason(device)
    if reason:
        return None, reason
    candidates = [version] if version != "auto" else (
        ["3", "2"] if torch.cuda.get_device_capability(device)[0] == 9 else ["2"])
    reasons = []
    for candidate in candidates:
        func, where = _flash_attn_func(candidate)
        if func is not None:
            return func, f"flash-attn-{candidate} ({where})"
        reasons.append(f"FA{candidate} not importable ({where})")
    return None, "; ".join(reasons)


def _flash_attn_call(func, q, k, v):
    """flash_attn_func takes [B, L, H, D]; some FA3 builds return (out, lse)."""
    out = func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out[0] if isinstance(out, tuple) else out
    return out.transpose(1, 2)


def _flash_attn_probe(device: torch.device, version: str) -> Availability:
    func, tag = _pick_flash_attn(version, device)
    if func is None:
        return Availability(False, tag)
    q = torch.randn(1, 2, PROBE_SEQ_LEN, 128, device=device, dtype=torch.bfloat16)
    try:
        _flash_attn_call(func, q, q, q)
    except Exception as exc:
        return Availability(False, f"{tag} failed a tiny call: {type(exc).__name__}: {exc}")
    return Availability(True, tag)


@register_family("flash_attn", category="dense", dense_reference=True,
                 params={"version": Param("auto", "'auto' (FA3 on Hopper if installed, else FA2), '2' or '3'",
                                          one_of("auto", "2", "3"))},
                 method_name=lambda p: "flash_attn" if p["version"] == "auto" else f"flash_attn{p['version']}",
                 label=lambda p: "FlashAttention" + ("" if p["version"] == "auto" else f"-{p['version']}"),
                 probe=_flash_attn_probe)
def build_flash_attn(problem: Problem, device: torch.device, *, version: str) -> PreparedAttention:
    """Dense FlashAttention from the flash_attn / flash_attn_3 packages."""
    func, tag = _pick_flash_attn(version, device)
    if func is None:
        raise MethodUnavailable(tag)
    if problem.torch_dtype not in FLASH_ATTN_DTYPES:
        raise MethodUnavailable(f"{tag} takes float16/bfloat16, not {problem.dtype}")
    return _dense_prepared("flash_attn", problem, tag.split(" ")[0], lambda q, k, v: _flash_attn_call(func, q, k, v))
