"""HilbertA forward attention: one Triton launch for shared and local query rows.

Algorithm (FlashAttention-2 style online softmax, fp32 accumulation):
- The host describes the sparsity as a block table (`HilbertLayout.block_table`): each program takes one
  query block of one (batch, head) — at most BLOCK_M rows that all belong to the shared set or all to one
  tile — and up to three contiguous key segments: [0, L) for shared rows; the S shared keys plus the tile's
  one or two runs (after the cyclic wrap) for local rows.
- Each segment is walked in BLOCK_N steps; only its last step can be partial, and only that one is masked.
  Tiles and offsets need not be multiples of the block sizes: a short last query block is masked on load and
  store, never mis-assigned to a neighbouring tile.
- Shared-row blocks (the heaviest: they sweep all L keys) come first in the table and the grid's fast axis is
  (batch, head), so the GPU schedules them first and the light local blocks fill the tail.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.config import KernelConfig, config_key, device_arch, lookup
from kernels.layout import TABLE_COLUMNS, HilbertLayout

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
GPU_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _attend_block(acc, l_i, m_i, q, K, V, k_base, v_base, row0, start_n, hi, stride_kn, stride_vn, qk_scale,
                  offs_n, offs_d, MASK_KEYS: tl.constexpr, USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) with the key block starting at ``start_n`` (keys >= hi masked)."""
    cols = start_n + offs_n
    in_range = cols < hi
    if USE_TMA:  # bulk tensor copy; rows past the window are masked below, past the tensor's end zero-filled
        k = K.load([row0 + start_n, 0])
    elif MASK_KEYS:
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=in_range[:, None], other=0.0)
    else:
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :])
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASK_KEYS:
        qk = tl.where(in_range[None, :], qk, float("-inf"))
    # running max in the log2 domain (scale folded in), then rescale what was accumulated so far
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    if USE_TMA:
        v = V.load([row0 + start_n, 0])
    elif MASK_KEYS:
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=in_range[:, None], other=0.0)
    else:
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :])
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_ij


# problem sizes are not specialized on (divisibility by 16), so one compiled kernel serves every resolution
@triton.jit(do_not_specialize=["seq_len", "num_heads", "num_bh", "num_blocks", "heavy_blocks"])
def _hilberta_fwd(Q, K, V, O, TABLE, qk_scale, seq_len,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, num_heads,
                  num_bh, num_blocks, heavy_blocks,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  NUM_SEGMENTS: tl.constexpr, TABLE_COLS: tl.constexpr, FLAT_LOOP: tl.constexpr,
                  USE_TMA: tl.constexpr, HEAD_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr):
    if HEAD_MAJOR:
        # 1-D grid: the heavy (shared-row) blocks of every head first, then the local blocks, each group
        # head by head, so that the programs running together share one head's K/V in L2
        pid = tl.program_id(0)
        heavy_programs = heavy_blocks * num_bh
        is_heavy = pid < heavy_programs
        p = tl.where(is_heavy, pid, pid - heavy_programs)
        per_head = tl.where(is_heavy, heavy_blocks, num_blocks - heavy_blocks)
        bh = p // per_head
        blk = p % per_head + tl.where(is_heavy, 0, heavy_blocks)
    else:
        bh = tl.program_id(0)  # fastest grid axis: all heads of one query block are scheduled together
        blk = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    row = TABLE + blk * TABLE_COLS
    q_start = tl.load(row)
    q_end = tl.load(row + 1)

    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_end
    # load q once: it stays in registers for the whole key sweep
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh if not USE_TMA else K
    v_base = V + b * stride_vb + h * stride_vh if not USE_TMA else V
    row0 = bh * seq_len  # first row of this (batch, head) in the [B*H*L, D] view that TMA reads

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if FLAT_LOOP:
        # one software-pipelined loop over the blocks of all segments; every step masks keys >= its
        # segment's end (only the segments' last blocks have any)
        lo0 = tl.load(row + 2)
        hi0 = tl.load(row + 3)
        lo1 = tl.load(row + 4)
        hi1 = tl.load(row + 5)
        lo2 = tl.load(row + 6)
        hi2 = tl.load(row + 7)
        n0 = tl.cdiv(hi0 - lo0, BLOCK_N)
        n01 = n0 + tl.cdiv(hi1 - lo1, BLOCK_N)
        total = n01 + tl.cdiv(hi2 - lo2, BLOCK_N)
        for i in range(0, total):
            start_n = tl.where(i >= n01, lo2 + (i - n01) * BLOCK_N,
                               tl.where(i >= n0, lo1 + (i - n0) * BLOCK_N, lo0 + i * BLOCK_N))
            hi = tl.where(i >= n01, hi2, tl.where(i >= n0, hi1, hi0))
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, k_base, v_base, row0, start_n, hi,
                                          stride_kn, stride_vn, qk_scale, offs_n, offs_d, True, USE_TMA,
                                          DOT_PRECISION)
    else:
        for seg in tl.static_range(NUM_SEGMENTS):
            lo = tl.load(row + 2 + 2 * seg)
            hi = tl.load(row + 3 + 2 * seg)
            full_hi = lo + (hi - lo) // BLOCK_N * BLOCK_N
            # stage 1: whole key blocks, no mask
            for start_n in range(lo, full_hi, BLOCK_N):
                acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, k_base, v_base, row0, start_n, hi,
                                              stride_kn, stride_vn, qk_scale, offs_n, offs_d, False, USE_TMA,
                                              DOT_PRECISION)
            # stage 2: the partial block at the segment's end (zero or one step)
            for start_n in range(full_hi, hi, BLOCK_N):
                acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, k_base, v_base, row0, start_n, hi,
                                              stride_kn, stride_vn, qk_scale, offs_n, offs_d, True, USE_TMA,
                                              DOT_PRECISION)

    # epilogue: normalise and store the block's valid rows
    out = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: HilbertLayout, layer: int) -> None:
    if not isinstance(layout, HilbertLayout):
        raise TypeError(f"layout must be a HilbertLayout, got {type(layout).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq_len, head_dim], got shape {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name}'s head dim must be contiguous (stride 1), got strides {t.stride()}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.dtype not in GPU_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use bfloat16 or float16 (float32 for tests)")
    if q.device.type == "cpu" and not _interpreting():
        raise ValueError("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); move them to CUDA")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {q.device}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if q.shape[2] != layout.seq_len:
        raise ValueError(f"sequence length {q.shape[2]} does not match the layout's {layout.seq_len} "
                         f"({layout.text_tokens} text + {layout.height}x{layout.width} image tokens)")
    if not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be an int >= 0, got {layer!r}")


def default_config(layout: HilbertLayout, head_dim: int, dtype: torch.dtype,
                   device: torch.device) -> tuple[KernelConfig, str]:
    """The stored tuned config for this problem on this GPU architecture, else the safe default."""
    key = config_key(head_dim, dtype, layout.seq_len, layout.tile_len)
    return lookup("hilberta", device_arch(device), key)


def block_table(layout: HilbertLayout, layer: int, block_m: int, device: torch.device) -> torch.Tensor:
    """The layout's block table on ``device``, cached on the layout per sliding phase."""
    cache = layout.__dict__.setdefault("_device_tables", {})
    key = (layer % layout.sliding_cycle, block_m, str(device))
    if key not in cache:
        cache[key] = layout.block_table(layer, block_m).to(device).contiguous()
    return cache[key]


def heavy_blocks(table: torch.Tensor, seq_len: int) -> int:
    """How many leading rows of a block table sweep all keys (the shared rows, which come first).
    A table on the GPU is read back: call this outside anything timed."""
    sweeps_all = (table[:, 2] == 0) & (table[:, 3] == seq_len)
    return int(sweeps_all.int().cumprod(0).sum())


def _heavy_count(layout: HilbertLayout, layer: int, block_m: int) -> int:
    """`heavy_blocks` of the layout's table, from its CPU copy, cached on the layout per sliding phase."""
    cache = layout.__dict__.setdefault("_heavy_blocks", {})
    key = (layer % layout.sliding_cycle, block_m)
    if key not in cache:
        cache[key] = heavy_blocks(layout.block_table(layer, block_m), layout.seq_len)
    return cache[key]


def hilbert_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: HilbertLayout,
                      layer: int = 0, config: KernelConfig | None = None,
                      scale: float | None = None) -> torch.Tensor:
    """Softmax attention under HilbertA's mask for ``layer``; q, k, v [B, H, L, D] in the permuted order."""
    _check_inputs(q, k, v, layout, layer)
    if config is None:
        config, _ = default_config(layout, q.shape[-1], q.dtype, q.device)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    table = block_table(layout, layer, config.block_m, q.device)
    heavy = _heavy_count(layout, layer, config.block_m) if config.head_major else None
    launch(q, k, v, out, table, config, scale, heavy)
    return out


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, table: torch.Tensor,
           config: KernelConfig, scale: float | None = None, heavy: int | None = None) -> None:
    """Run the kernel over the query blocks of ``table`` (all of a layout's, or a subset of them: the
    kernel benchmark times shared and local rows apart this way). Inputs are not checked here.
    ``heavy`` is `heavy_blocks(table, L)`, needed by the head-major order (computed here when absent)."""
    batch, heads, seq_len, head_dim = q.shape
    if config.head_major and heavy is None:
        heavy = heavy_blocks(table, seq_len)
    num_blocks = table.shape[0]
    grid = (batch * heads * num_blocks,) if config.head_major else (batch * heads, num_blocks)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    use_tma = config.tma and k.is_contiguous() and v.is_contiguous()
    if use_tma:  # K and V as [B*H*L, D] tensors read by the bulk copy engine, a BLOCK_N x D box at a time
        k_arg = TensorDescriptor.from_tensor(k.view(-1, head_dim), [config.block_n, head_dim])
        v_arg = TensorDescriptor.from_tensor(v.view(-1, head_dim), [config.block_n, head_dim])
    else:
        k_arg, v_arg = k, v
    _hilberta_fwd[grid](
        q, k_arg, v_arg, out, table, scale * 1.4426950408889634, seq_len,  # log2(e): the kernel uses exp2
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), heads,
        batch * heads, num_blocks, heavy or 0,
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        NUM_SEGMENTS=(TABLE_COLUMNS - 2) // 2, TABLE_COLS=TABLE_COLUMNS, FLAT_LOOP=config.flat_loop,
        USE_TMA=use_tma, HEAD_MAJOR=config.head_major,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def hilbert_attention_computed_pairs(layout: HilbertLayout, layer: int, config: KernelConfig) -> int:
    """(query, key) pairs per (batch, head) the kernel computes with ``config``: its block-level work."""
    return layout.computed_pairs(layer, config.block_m, config.block_n)
