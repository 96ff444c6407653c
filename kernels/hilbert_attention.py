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
- Knobs of issue #14 (`KernelConfig`): ``qk_ahead`` (the flat loop with the softmax of one block overlapping
  the PV dot of the previous one) and ``tma_qo`` (Q and O through tensor descriptors too); together 5 % faster
  at 2048x2048 T=16 on an H200, neutral at 4096 (docs/kernel-notes.md). Persistent programs with a static
  tile scheduler were measured too (3-10 % slower) and left out.
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
def _qk_block(q, K, k_base, row0, start_n, hi, stride_kn, offs_n, offs_d, MASK_KEYS: tl.constexpr,
              USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Scores ``q @ K^T`` of the key block starting at ``start_n``; keys >= hi are -inf when MASK_KEYS."""
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
    return qk


@triton.jit
def _softmax(qk, m_i, l_i, qk_scale):
    """Online-softmax step on the scores ``qk``: probabilities p, the factor alpha that rescales what was
    accumulated so far, and the new running max and row sums."""
    # running max in the log2 domain (scale folded in)
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    return p, alpha, m_ij, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _pv(acc, p, alpha, V, v_base, row0, start_n, hi, stride_vn, offs_n, offs_d, MASK_KEYS: tl.constexpr,
        USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc * alpha + p @ V`` with the value block starting at ``start_n`` (keys >= hi not loaded)."""
    cols = start_n + offs_n
    if USE_TMA:
        v = V.load([row0 + start_n, 0])
    elif MASK_KEYS:
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=(cols < hi)[:, None], other=0.0)
    else:
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :])
    return tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)


@triton.jit
def _attend_block(acc, l_i, m_i, q, K, V, k_base, v_base, row0, start_n, hi, stride_kn, stride_vn, qk_scale,
                  offs_n, offs_d, MASK_KEYS: tl.constexpr, USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) with the key block starting at ``start_n`` (keys >= hi masked)."""
    qk = _qk_block(q, K, k_base, row0, start_n, hi, stride_kn, offs_n, offs_d, MASK_KEYS, USE_TMA, DOT_PRECISION)
    p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, qk_scale)
    acc = _pv(acc, p, alpha, V, v_base, row0, start_n, hi, stride_vn, offs_n, offs_d, MASK_KEYS, USE_TMA,
              DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _flat_block(i, n0, n01, lo0, hi0, lo1, hi1, lo2, hi2, BLOCK_N: tl.constexpr):
    """(start, segment end) of the i-th key block of the flat loop: n0 blocks in segment 0, n01 in 0 and 1."""
    start_n = tl.where(i >= n01, lo2 + (i - n01) * BLOCK_N,
                       tl.where(i >= n0, lo1 + (i - n0) * BLOCK_N, lo0 + i * BLOCK_N))
    hi = tl.where(i >= n01, hi2, tl.where(i >= n0, hi1, hi0))
    return start_n, hi


@triton.jit
def _head_major_item(work, num_bh, num_blocks, heavy_blocks):
    """(batch*head, table row) of work item ``work`` in the head-major order: the heavy (shared-row) blocks of
    every head first, then the local blocks, each group head by head, so that the programs running together
    share one head's K/V in L2."""
    heavy_items = heavy_blocks * num_bh
    is_heavy = work < heavy_items
    p = tl.where(is_heavy, work, work - heavy_items)
    per_head = tl.where(is_heavy, heavy_blocks, num_blocks - heavy_blocks)
    return p // per_head, p % per_head + tl.where(is_heavy, 0, heavy_blocks)


@triton.jit
def _query_block(Q, K, V, O, Q_DESC, O_DESC, TABLE, bh, blk, qk_scale, seq_len,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, num_heads,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 NUM_SEGMENTS: tl.constexpr, TABLE_COLS: tl.constexpr, FLAT_LOOP: tl.constexpr,
                 QK_AHEAD: tl.constexpr, USE_TMA: tl.constexpr, USE_TMA_QO: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Attention of one query block (row ``blk`` of the table) of one (batch, head). Q_DESC and O_DESC are
    the tensor descriptors of USE_TMA_QO (None without it)."""
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    row = TABLE + blk * TABLE_COLS
    q_start = tl.load(row)
    q_end = tl.load(row + 1)

    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_end
    row0 = bh * seq_len  # first row of this (batch, head) in the [B*H*L, D] view that TMA reads
    # load q once: it stays on chip for the whole key sweep
    if USE_TMA_QO:  # rows past q_end are other rows of Q (zeros past its end): computed on, never stored
        q = Q_DESC.load([row0 + q_start, 0])
    else:
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh if not USE_TMA else K
    v_base = V + b * stride_vb + h * stride_vh if not USE_TMA else V

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
        if QK_AHEAD:
            # FA3's intra-warpgroup overlap, by hand: step i issues the QK^T of block i, then the PV of block
            # i-1, then the softmax of block i, which runs on the CUDA cores while the PV dot is in flight.
            # Triton's Hopper pipeliner waits for a dot right after it unless its result is first used after
            # the next step's wait: true of the PV accumulator, never of scores (their softmax needs them), so
            # it is the PV dot, not a QK^T issued one block ahead, that can overlap the softmax. Step 0's PV
            # is a no-op on block 0's V (p = 0: acc stays exactly 0), which keeps block 0's K load in the
            # pipelined loop (peeled, it takes a shared-memory buffer of its own); the last PV is peeled off.
            p = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            alpha = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
            prev_start, prev_hi = _flat_block(0, n0, n01, lo0, hi0, lo1, hi1, lo2, hi2, BLOCK_N)
            for i in range(0, total):
                start_n, hi = _flat_block(i, n0, n01, lo0, hi0, lo1, hi1, lo2, hi2, BLOCK_N)
                qk = _qk_block(q, K, k_base, row0, start_n, hi, stride_kn, offs_n, offs_d, True, USE_TMA,
                               DOT_PRECISION)
                acc = _pv(acc, p, alpha, V, v_base, row0, prev_start, prev_hi, stride_vn, offs_n, offs_d, True,
                          USE_TMA, DOT_PRECISION)
                p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, qk_scale)
                prev_start, prev_hi = start_n, hi
            acc = _pv(acc, p, alpha, V, v_base, row0, prev_start, prev_hi, stride_vn, offs_n, offs_d, True,
                      USE_TMA, DOT_PRECISION)
        else:
            for i in range(0, total):
                start_n, hi = _flat_block(i, n0, n01, lo0, hi0, lo1, hi1, lo2, hi2, BLOCK_N)
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
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    if USE_TMA_QO:
        # a bulk store writes the whole BLOCK_M box, i.e. the next block's rows too when this one is short:
        # only full blocks go through the descriptor
        if q_end - q_start == BLOCK_M:
            O_DESC.store([row0 + q_start, 0], out)
        else:
            tl.store(o_ptrs, out, mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out, mask=row_ok[:, None])


# problem sizes are not specialized on (divisibility by 16), so one compiled kernel serves every resolution
@triton.jit(do_not_specialize=["seq_len", "num_heads", "num_bh", "num_blocks", "heavy_blocks"])
def _hilberta_fwd(Q, K, V, O, Q_DESC, O_DESC, TABLE, qk_scale, seq_len,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, num_heads,
                  num_bh, num_blocks, heavy_blocks,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  NUM_SEGMENTS: tl.constexpr, TABLE_COLS: tl.constexpr, FLAT_LOOP: tl.constexpr,
                  QK_AHEAD: tl.constexpr, USE_TMA: tl.constexpr, USE_TMA_QO: tl.constexpr,
                  HEAD_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr):
    if HEAD_MAJOR:  # 1-D grid in the head-major order
        bh, blk = _head_major_item(tl.program_id(0), num_bh, num_blocks, heavy_blocks)
    else:
        bh = tl.program_id(0)  # fastest grid axis: all heads of one query block are scheduled together
        blk = tl.program_id(1)
    _query_block(Q, K, V, O, Q_DESC, O_DESC, TABLE, bh, blk, qk_scale, seq_len,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, num_heads,
                 HEAD_DIM, BLOCK_M, BLOCK_N, NUM_SEGMENTS, TABLE_COLS, FLAT_LOOP, QK_AHEAD, USE_TMA,
                 USE_TMA_QO, DOT_PRECISION)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _descriptor_ok(t: torch.Tensor) -> bool:
    """Whether ``t`` can be read through a [B*H*L, D] tensor descriptor (a view needs it contiguous; the bulk
    copy engine needs a 16-byte aligned base)."""
    return t.is_contiguous() and t.data_ptr() % 16 == 0


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
    if config.qk_ahead and not config.flat_loop:
        raise ValueError(f"{config.name}: qk_ahead is a form of the flat loop; set flat_loop=True too")
    batch, heads, seq_len, head_dim = q.shape
    if config.head_major and heavy is None:
        heavy = heavy_blocks(table, seq_len)
    num_blocks = table.shape[0]
    grid = (batch * heads * num_blocks,) if config.head_major else (batch * heads, num_blocks)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    use_tma = config.tma and _descriptor_ok(k) and _descriptor_ok(v)
    if use_tma:  # K and V as [B*H*L, D] tensors read by the bulk copy engine, a BLOCK_N x D box at a time
        k_arg = TensorDescriptor.from_tensor(k.view(-1, head_dim), [config.block_n, head_dim])
        v_arg = TensorDescriptor.from_tensor(v.view(-1, head_dim), [config.block_n, head_dim])
    else:
        k_arg, v_arg = k, v
    use_tma_qo = config.tma_qo and _descriptor_ok(q) and _descriptor_ok(out)
    if use_tma_qo:  # the same [B*H*L, D] views of Q and O, a BLOCK_M x D box at a time
        q_desc = TensorDescriptor.from_tensor(q.view(-1, head_dim), [config.block_m, head_dim])
        o_desc = TensorDescriptor.from_tensor(out.view(-1, head_dim), [config.block_m, head_dim])
    else:
        q_desc = o_desc = None
    _hilberta_fwd[grid](
        q, k_arg, v_arg, out, q_desc, o_desc, table, scale * 1.4426950408889634, seq_len,  # log2(e): exp2
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), heads,
        batch * heads, num_blocks, heavy or 0,
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        NUM_SEGMENTS=(TABLE_COLUMNS - 2) // 2, TABLE_COLS=TABLE_COLUMNS, FLAT_LOOP=config.flat_loop,
        QK_AHEAD=config.qk_ahead, USE_TMA=use_tma, USE_TMA_QO=use_tma_qo, HEAD_MAJOR=config.head_major,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def hilbert_attention_computed_pairs(layout: HilbertLayout, layer: int, config: KernelConfig) -> int:
    """(query, key) pairs per (batch, head) the kernel computes with ``config``: its block-level work."""
    return layout.computed_pairs(layer, config.block_m, config.block_n)
