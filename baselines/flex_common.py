"""Shared FlexAttention plumbing: token masks from per-token lookups, cached block masks, prepared runs.

Every sparse mask in this package is a `TokenMask`: a few int/bool tables indexed by sequence position and
one small rule over them, e.g. "shared[q] | shared[kv] | (tile[q] == tile[kv])". The same rule gives

- the FlexAttention ``mask_mod`` (``rule(q_idx, kv_idx)`` on scalar index tensors, traced by Flex), and
- exact boolean mask rows for the correctness reference and locality metrics
  (``rule(rows[:, None], arange(L)[None, :])``, broadcasting),

so a Flex run and its reference cannot disagree about the mask. Block masks are built once per
(mask, device) and cached; on CUDA both `create_block_mask` and `flex_attention` are compiled (uncompiled
Flex materializes the L x L scores and is no fair peer), on CPU they run eagerly for smoke tests.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

import torch

from baselines.base import Availability, PreparedAttention
from baselines.problem import Problem

Rule = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
FLEX_BLOCK_SIZE = 128  # Flex's default; block-level densities below are quoted at this granularity
# Up to this many (query, key) pairs a block mask is built eagerly: the dense [L, L] mask and the mask
# function's integer intermediates fit in GPU memory (2048x2048: 285 M pairs, ~10 GB at peak), and this
# skips create_block_mask's torch.compile, which took 78 s cold on an H100 (in every ncu subprocess too).
# Above it (4096x4096: 4.4 G pairs) only the compiled, tiled build fits.
EAGER_BLOCK_MASK_PAIRS = 2**29
# Inductor compiles in a pool of worker processes by default (about one per core). For Flex's few kernels,
# loaded from Inductor's disk cache after a machine's first run, the pool only costs: measured on an H200
# host (2026-11-28), a process that compiled Flex spent 11-12 s in its exit shutting the pool down (1.5 s
# with one compile thread), and a spread run starts one pool per card. One thread unless the user chose;
# set in the environment too, so env.json records it and the ncu target processes inherit it. Inductor
# reads it when its config is first imported: that import (torch._dynamo with it, 1.3 s of every process's
# start-up on a CPU host) is left to the first Flex compile unless something imported it already.
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"
if COMPILE_THREADS_ENV not in os.environ:
    os.environ[COMPILE_THREADS_ENV] = "1"
    if "torch._inductor.config" in sys.modules:  # Inductor has read its environment already
        sys.modules["torch._inductor.config"].compile_threads = 1
# Each (problem, mask) pair compiles its own Flex graph; the dynamo default (8) would silently fall back
# to eager Flex partway through a suite. Raise it, and make hitting it an error rather than a slow run.
RECOMPILE_LIMIT = 256


@dataclass(frozen=True, eq=False)
class TokenMask:
    """A boolean [L, L] attention mask given by per-position lookup tables and a rule over them."""

    name: str  # encodes every parameter (cache key and label), e.g. "na_h64w64_t512_k17"
    seq_len: int
    rule: Rule
    tables: Mapping[str, torch.Tensor]  # each indexed by sequence position, on the CPU
    _on_device: dict = field(default_factory=dict, repr=False)  # device -> tables there

    def tables_on(self, device: torch.device | str) -> Mapping[str, torch.Tensor]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = {k: t.to(device) for k, t in self.tables.items()}
        return self._on_device[key]

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """bool [len(rows), L]: the keys each of these query positions may attend, on ``rows.device``."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        tables = self.tables_on(rows.device)
        keys = torch.arange(self.seq_len, device=rows.device)
        return self.rule(rows[:, None], keys[None, :], tables)

    def dense(self) -> torch.Tensor:
        return self.rows(torch.arange(self.seq_len))

    def allowed_pairs(self, chunk: int = 1024) -> int:
        """Count of allowed (query, key) pairs, by brute force in row chunks (small problems, tests)."""
        return sum(int(self.rows(torch.arange(s, min(s + chunk, self.seq_len))).sum())
                   for s in range(0, self.seq_len, chunk))

    def mask_mod(self, device: torch.device | str):
        tables = self.tables_on(device)
        rule = self.rule

        def mask_mod(b, h, q_idx, kv_idx):
            return rule(q_idx, kv_idx, tables)

        mask_mod.__name__ = self.name
        return mask_mod


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    settings = {"recompile_limit": RECOMPILE_LIMIT, "accumulated_recompile_limit": 4 * RECOMPILE_LIMIT,
                "fail_on_recompile_limit_hit": True}
    for name, value in settings.items():
        if hasattr(dynamo_config, name):  # names differ across torch versions
            current = getattr(dynamo_config, name)
            setattr(dynamo_config, name, value if isinstance(value, bool) else max(current, value))


@cache
def flex_kernel(device_type: str):
    """`flex_attention`, compiled on CUDA (once per process), eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        # Eager Flex on the CPU is the point (smoke runs, tests): silence its "use torch.compile" advice.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention
    _raise_recompile_limit()
    return torch.compile(flex_attention, dynamic=False)


def flex_backend(device: torch.device) -> str:
    return "flex-triton" if device.type == "cuda" else "flex-eager"


_BLOCK_MASKS: dict[tuple[str, int, str], object] = {}


def block_mask_for(mask: TokenMask, device: torch.device) -> tuple[object, float]:
    """The cached Flex `BlockMask` of ``mask`` on ``device``, and the ms spent building it (0 if cached)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (mask.name, mask.seq_len, str(device))
    if key in _BLOCK_MASKS:
        return _BLOCK_MASKS[key], 0.0
    start = time.perf_counter()
    block_mask = create_block_mask(mask.mask_mod(device), None, None, mask.seq_len, mask.seq_len,
                                   device=device, BLOCK_SIZE=FLEX_BLOCK_SIZE, _compile=_compile_block_mask(mask, device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _BLOCK_MASKS[key] = block_mask
    return block_mask, (time.perf_counter() - start) * 1e3


def _compile_block_mask(mask: TokenMask, device: torch.device) -> bool:
    return device.type == "cuda" and mask.seq_len ** 2 > EAGER_BLOCK_MASK_PAIRS


def block_computed_pairs(block_mask) -> int:
    """(query, key) pairs Flex computes per (batch, head): every visited block counts whole (Flex's own
    accounting in `BlockMask.sparsity`), partial and full blocks alike."""
    blocks = int(block_mask.kv_num_blocks[0, 0].sum())
    if block_mask.full_kv_num_blocks is not None:
        blocks += int(block_mask.full_kv_num_blocks[0, 0].sum())
    block_q, block_kv = block_mask.BLOCK_SIZE
    return blocks * block_q * block_kv


def prepare_flex(method: str, problem: Problem, device: torch.device, mask: TokenMask | None, *,
                 image_order: torch.Tensor | None = None, allowed_pairs: int | None = None,
                 setup_ms: Mapping[str, float] | None = None, extra: Mapping | None = None) -> PreparedAttention:
    """A `PreparedAttention` running FlexAttention under ``mask`` (None = dense) in the given token order.

    ``allowed_pairs`` is the method's exact count (closed form); it defaults to brute-force counting,
    which is only affordable for small problems.
    """
    if mask is not None and mask.seq_len != problem.seq_len:
        raise ValueError(f"mask {mask.name} is for L={mask.seq_len}, problem has L={problem.seq_len}")
    kernel = flex_kernel(device.type)
    seq_len = problem.seq_len
    timings = dict(setup_ms or {})
    if mask is None:
        block_mask, computed = None, seq_len * seq_len
        allowed = seq_len * seq_len
        mask_rows = None
    else:
        block_mask, timings["mask"] = block_mask_for(mask, device)
        computed = block_computed_pairs(block_mask)
        allowed = mask.allowed_pairs() if allowed_pairs is None else allowed_pairs
        mask_rows = mask.rows

    def run(q, k, v):
        return kernel(q, k, v, block_mask=block_mask)

    return PreparedAttention(
        method=method, problem=problem, backend=flex_backend(device), run=run, image_order=image_order,
        mask_rows=mask_rows, allowed_pairs=allowed, computed_pairs=computed, setup_ms=timings,
        extra={"flex_block_size": FLEX_BLOCK_SIZE, **(extra or {}),
               **({"mask": mask.name} if mask is not None else {})})


def flex_probe(device: torch.device) -> Availability:
    """FlexAttention can run here: CUDA with Triton, or the CPU (eager, for smoke runs)."""
    try:
        import torch.nn.attention.flex_attention
    except ImportError as exc:
        return Availability(False, f"torch {torch.__version__} has no FlexAttention ({exc})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return Availability(False, "no CUDA device")
        try:
            import triton  # noqa: F401
        except ImportError:
            return Availability(False, "triton is not installed (compiled FlexAttention needs it)")
        return Availability(True, "flex-triton (torch.compile)")
    if device.type == "cpu":
        return Availability(True, "flex-eager (CPU smoke runs; materializes the scores)")
    return Availability(False, f"FlexAttention is not set up for device type {device.type!r}")
