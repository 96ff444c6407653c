"""FlashAttention-4 (package flash-attn-4, module flash_attn.cute: CuTe DSL kernels) as methods.

- ``fa4_dense``: `flash_attn.cute.interface.flash_attn_func` without a mask (a dense reference).
- ``hilberta_fa4``, ``sta_fa4``, ``na_fa4``: the very masks the Flex variants run (`hilberta_mask`,
  `sliding_tile_mask`, `neighborhood_mask`), through FA4's block sparsity: the Flex `BlockMask` of the
  mask (shared with the Flex methods through `block_mask_for`'s cache) gives the full and partial key
  blocks (`fa4_masks.fa4_block_tables`), and a ``@cute.jit`` mask_mod evaluates the mask's integer
  formula (`fa4_masks.hilberta_rule` / `window_rule`, constants baked in) on the partial ones.

q, k, v [B, H, L, D] reach FA4 as [B, L, H, D] views (no copy; FA4 takes any 16-byte aligned strides).
Availability is probed once per device: flash_attn.cute imports, a CUDA device of sm90 or newer, and one
tiny dense call; the reason says which failed. Each distinct mask compiles its own kernel on first call
(FA4 keys its compile cache on the mask_mod's hash, which `mask_cache_key` sets from the rule's module
source and the constants). FA4's on-disk cache of compiled kernels is switched on (unless the environment
says otherwise), so a kernel compiled once on a machine is loaded by every later process, the workers of a
``--gpus`` run included, instead of compiling again (6-9 s per mask on an H200).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from functools import cache, partial

import torch

from baselines.base import Availability, PreparedAttention
from baselines.dense import FLASH_ATTN_DTYPES, PROBE_SEQ_LEN, _dense_prepared, _flash_attn_call, _no_cuda_reason
from baselines.fa4_masks import Rule, fa4_block_tables, hilberta_constants, hilberta_rule, window_constants, window_rule
from baselines.flex_common import TokenMask, block_computed_pairs, block_mask_for
from baselines.hilberta_methods import _labeler, _layout_facts, _namer, _params, hilberta_mask, layout_for
from baselines.neighborhood import _allowed_pairs as na_allowed_pairs
from baselines.problem import Problem
from baselines.registry import MethodUnavailable, Param, odd_int, register_family
from baselines.sliding_tile import STA_PARAMS
from baselines.sliding_tile import _allowed_pairs as sta_allowed_pairs
from baselines.sliding_tile import _labeler as sta_labeler
from baselines.sliding_tile import _namer as sta_namer
from baselines.window_masks import neighborhood_mask, sliding_tile_mask

INSTALL_HINT = "pip install .[fa4] (on an offline GPU machine: ../shared/offline-wheels/fa4/pack.sh)"
MIN_MAJOR = 9  # FA4's forward kernels: Hopper (sm90) and Blackwell (sm100+)
# FA4 reads this once, when flash_attn.cute is imported (here, lazily): set before that. Its cache directory
# is FLASH_ATTENTION_CUTE_DSL_CACHE_DIR, default /tmp/<user>/flash_attention_cute_dsl_cache; entries are
# keyed by FA4's own source and versions, so an upgrade never loads a stale kernel.
DISK_CACHE_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"
os.environ.setdefault(DISK_CACHE_ENV, "1")


@cache
def fa4_function() -> tuple[Callable | None, str]:
    """(flash_attn.cute's flash_attn_func, "flash-attn-4 X") or (None, why not and how to install)."""
    try:
        from flash_attn.cute.interface import flash_attn_func
    except Exception as exc:  # ImportError, or the CUTLASS DSL failing to load
        return None, f"flash_attn.cute is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    # FA4 hands its own AuxData to every kernel compile and the CUTLASS DSL warns that it is no JitArgument
    # (4.0.0b36 with CUTLASS DSL 4.8.1): noise, outputs are exact (checked on an H100).
    warnings.filterwarnings("ignore", message=r"Argument aux_data \(position \d+\) cannot be converted",
                            category=UserWarning)
    try:
        version = importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return flash_attn_func, f"flash-attn-4 {version}"


def tiny_call(func: Callable, device: torch.device, tag: str) -> Availability:
    """One small dense bf16 call: compiles and runs FA4's kernel once, or says why it could not."""
    try:
        q = torch.randn(1, 2, PROBE_SEQ_LEN, 128, device=device, dtype=torch.bfloat16)
        _flash_attn_call(func, q, q, q)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:
        return Availability(False, f"{tag} failed a tiny call: {type(exc).__name__}: {exc}")
    return Availability(True, f"{tag} (CuTe DSL)")


@cache
def _device_status(device: str) -> Availability:
    func, tag = fa4_function()
    if func is None:
        return Availability(False, tag)
    dev = torch.device(device)
    reason = _no_cuda_reason(dev)
    if reason:
        return Availability(False, f"{tag}: {reason}")
    major, minor = torch.cuda.get_device_capability(dev)
    if major < MIN_MAJOR:
        return Availability(False, f"{tag} needs sm{MIN_MAJOR}0 or newer (Hopper, Blackwell); this GPU is "
                                   f"sm{major}{minor}")
    return tiny_call(func, dev, tag)


def fa4_probe(device: torch.device, **_params) -> Availability:
    """Whether FA4 runs on ``device``: probed once per device for every FA4 method."""
    return _device_status(str(device))


def _fa4_for(problem: Problem, device: torch.device) -> Callable:
    avail = fa4_probe(device)
    if not avail:
        raise MethodUnavailable(avail.reason)
    if problem.torch_dtype not in FLASH_ATTN_DTYPES:
        raise MethodUnavailable(f"FlashAttention-4 takes float16/bfloat16, not {problem.dtype}")
    return fa4_function()[0]


def _ssa_constant(constants: Mapping[str, int], name: str):
    import cutlass
    from flash_attn.cute import utils

    return utils.scalar_to_ssa(constants[name], cutlass.Int32)


def mask_cache_key(rule: Rule, constants: Mapping[str, int]) -> str:
    """The hash FA4 files the mask_mod's kernel under: the same in every process for the same mask.

    FA4's own hash of a callable mixes in ``repr`` of its closure, and the repr of ``rule`` (a function)
    holds its address, different in every process: the on-disk cache would never hit. This one covers all
    that decides the generated code: the source of the rule's module (the rule and its helpers), of this
    module (how the rule becomes a mask_mod), the rule's name and the constants."""
    digest = hashlib.sha256()
    for module in (inspect.getmodule(rule), inspect.getmodule(mask_cache_key)):
        digest.update(inspect.getsource(module).encode())
    digest.update(rule.__qualname__.encode())
    digest.update(repr(sorted(constants.items())).encode())
    return digest.hexdigest()


def cute_mask_mod(rule: Rule, constants: Mapping[str, int]):
    """FA4's mask_mod ``(batch, head, q, kv, seqlen_info, aux_tensors)`` evaluating ``rule`` with these
    constants, its compile-cache hash set to `mask_cache_key` (distinct exactly when the mask is)."""
    import cutlass.cute as cute

    constants = dict(constants)

    @cute.jit
    def mask_mod(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        return rule(q_idx, kv_idx, partial(_ssa_constant, constants))

    mask_mod.__cute_hash__ = mask_cache_key(rule, constants)
    return mask_mod


def _prepare_sparse(method: str, problem: Problem, device: torch.device, mask: TokenMask, rule: Rule,
                    constants: Mapping[str, int], *, allowed_pairs: int, image_order: torch.Tensor | None = None,
                    setup_ms: Mapping[str, float] | None = None, extra: Mapping | None = None) -> PreparedAttention:
    """FA4 block-sparse under ``mask``: Flex's block tables, ``rule`` as the mask_mod on partial blocks."""
    func = _fa4_for(problem, device)
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    block_mask, mask_ms = block_mask_for(mask, device)
    tables = fa4_block_tables(block_mask)
    attend = partial(func, mask_mod=cute_mask_mod(rule, constants),
                     block_sparse_tensors=BlockSparseTensorsTorch(**tables))
    return PreparedAttention(
        method=method, problem=problem, backend="fa4-cute-blocksparse",
        run=lambda q, k, v: _flash_attn_call(attend, q, k, v), image_order=image_order, mask_rows=mask.rows,
        allowed_pairs=allowed_pairs, computed_pairs=block_computed_pairs(block_mask),
        setup_ms={**(setup_ms or {}), "mask": mask_ms},
        extra={"fa4_block_size": list(tables["block_size"]), "mask": mask.name, "mask_constants": dict(constants),
               **(extra or {})})


@register_family("fa4_dense", category="dense", label=lambda _p: "FlashAttention-4 dense", probe=fa4_probe,
                 dense_reference=True)
def build_fa4_dense(problem: Problem, device: torch.device) -> PreparedAttention:
    """Dense FlashAttention-4."""
    func = _fa4_for(problem, device)
    return _dense_prepared("fa4_dense", problem, "fa4-cute", lambda q, k, v: _flash_attn_call(func, q, k, v))


@register_family("hilberta_fa4", category="hilberta", params=_params(("hilbert", "closed")),
                 method_name=_namer("hilberta_fa4"), label=_labeler("HilbertA via FA4"), probe=fa4_probe)
def build_hilberta_fa4(problem: Problem, device: torch.device, *, tiles: int, centre: float, curve: str,
                       cycle: int) -> PreparedAttention:
    """HilbertA's mask (this layer's sliding phase) through FA4 block sparsity."""
    layout, layout_ms = layout_for(problem, tiles, centre, curve, cycle)
    layer = problem.layer
    return _prepare_sparse("hilberta_fa4", problem, device, hilberta_mask(layout, layer), hilberta_rule,
                           hilberta_constants(layout, layer), allowed_pairs=layout.allowed_pairs(layer),
                           image_order=layout.permutation(), setup_ms={"layout": layout_ms},
                           extra=_layout_facts(layout, layer))


@register_family("sta_fa4", category="sliding_tile", params=STA_PARAMS, method_name=sta_namer("sta_fa4"),
                 label=sta_labeler("STA via FA4"), probe=fa4_probe)
def build_sta_fa4(problem: Problem, device: torch.device, *, tile: tuple[int, int],
                  window: tuple[int, int]) -> PreparedAttention:
    """Sliding tile attention's mask through FA4 block sparsity (row-major image order)."""
    grid = (problem.height, problem.width, problem.text_tokens)
    return _prepare_sparse("sta_fa4", problem, device, sliding_tile_mask(*grid, tile, window), window_rule,
                           window_constants(*grid, tile, window),
                           allowed_pairs=sta_allowed_pairs(problem, tile, window))


@register_family("na_fa4", category="neighborhood",
                 params={"kernel": Param(17, "window side k in tokens, an odd positive int", odd_int)},
                 method_name=lambda p: f"na_fa4_k{p['kernel']}",
                 label=lambda p: f"NA {p['kernel']}x{p['kernel']} via FA4", probe=fa4_probe)
def build_na_fa4(problem: Problem, device: torch.device, *, kernel: int) -> PreparedAttention:
    """Neighbourhood attention's mask through FA4 block sparsity (row-major image order)."""
    if kernel > min(problem.height, problem.width):
        raise ValueError(f"NA kernel {kernel} exceeds the {problem.height}x{problem.width} token grid")
    grid = (problem.height, problem.width, problem.text_tokens)
    return _prepare_sparse("na_fa4", problem, device, neighborhood_mask(*grid, kernel), window_rule,
                           window_constants(*grid, (1, 1), (kernel, kernel)),
                           allowed_pairs=na_allowed_pairs(problem, kernel))
