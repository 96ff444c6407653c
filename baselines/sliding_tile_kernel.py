"""Sliding tile attention (STA) on the row-major image grid: a Triton kernel and its launcher.

Semantics (the reference is `baselines.window_masks.sliding_tile_mask`): the joint sequence is
``[text (T) | image tokens, row-major H x W]``; the grid is cut into tiles of ``th x tw`` tokens (partial
tiles at the far edges); the queries of a tile attend every text key plus the image keys of the
``kh x kw`` tiles around it, window start ``clamp(tile - kh // 2, 0, n_tiles - kh)`` per axis; text
queries attend every key.

Algorithm: FlashAttention-style online softmax with fp32 accumulation, one program per
(query tile or text block, batch * head):

- program ids ``[0, n_text_programs)`` take ``BLOCK`` text query rows each and sweep all L keys in
  contiguous blocks (they are the longest programs, so they are scheduled first);
- the others take one query tile (``BLOCK = pow2(th) * pow2(tw)`` rows: ``th`` rows of ``tw`` contiguous
  tokens, stride W), attend the text keys in contiguous blocks, then the window tiles one at a time.
  A key tile is loaded straight from the row-major layout with strided pointer arithmetic: this
  non-contiguous access pattern is the point of the comparison with HilbertA, whose tiles are contiguous
  segments of its curve order.

Block sizes follow the tile shape; only ``num_warps`` / ``num_stages`` come from the tuned configs
(`kernels.config.lookup("sta", arch, key)` with ``tile_len = th * tw``), so `KernelConfig.block_m` and
``block_n`` are ignored here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels.config import DEFAULTS, KernelConfig, config_key, device_arch, lookup

LOG2_E = 1.4426950408889634
GPU_DTYPES = (torch.float16, torch.bfloat16)
GPU_HEAD_DIMS = (64, 128)
MIN_BLOCK, MAX_BLOCK = 16, 256  # tl.dot needs >= 16 rows; 256 rows x 128 fp32 accumulators is the cap


@dataclass(frozen=True)
class StaGeometry:
    """Where tiles and windows fall for one problem; everything the launcher derives from the shapes."""

    height: int
    width: int
    text_tokens: int
    tile: tuple[int, int]
    window: tuple[int, int]

    def __post_init__(self) -> None:
        if min(self.height, self.width) <= 0 or self.text_tokens < 0:
            raise ValueError(f"bad grid {self.height}x{self.width} with {self.text_tokens} text tokens")
        if min(self.tile) <= 0 or min(self.window) <= 0:
            raise ValueError(f"tile {self.tile} and window {self.window} must be positive")
        if not MIN_BLOCK <= self.block <= MAX_BLOCK:
            raise ValueError(
                f"tile {self.tile[0]}x{self.tile[1]} pads to {self.block} query rows per program; the kernel "
                f"needs {MIN_BLOCK}..{MAX_BLOCK} (tile sides are padded to powers of two)")

    @property
    def seq_len(self) -> int:
        return self.text_tokens + self.height * self.width

    @property
    def n_tiles(self) -> tuple[int, int]:
        return math.ceil(self.height / self.tile[0]), math.ceil(self.width / self.tile[1])

    @property
    def effective_window(self) -> tuple[int, int]:
        """A window wider than the grid covers the whole axis."""
        return min(self.window[0], self.n_tiles[0]), min(self.window[1], self.n_tiles[1])

    @property
    def padded_tile(self) -> tuple[int, int]:
        return triton.next_power_of_2(self.tile[0]), triton.next_power_of_2(self.tile[1])

    @property
    def block(self) -> int:
        """Rows per program and keys per inner step."""
        return self.padded_tile[0] * self.padded_tile[1]

    @property
    def text_programs(self) -> int:
        return math.ceil(self.text_tokens / self.block)

    def computed_pairs(self) -> int:
        """(query, key) pairs the kernel computes per (batch, head), padding lanes included."""
        block = self.block
        text_keys = math.ceil(self.text_tokens / block) * block
        all_keys = math.ceil(self.seq_len / block) * block
        window_tiles = self.effective_window[0] * self.effective_window[1]
        image_programs = self.n_tiles[0] * self.n_tiles[1]
        return block * (self.text_programs * all_keys + image_programs * (text_keys + window_tiles * block))


@triton.jit
def _attend_block(acc, m_i, l_i, q, k_base, v_base, keys, key_valid, stride_kl, stride_vl, offs_d,
                  qk_scale):
    """One online-softmax step over a block of keys (any positions, masked by ``key_valid``)."""
    k = tl.load(k_base + keys[None, :] * stride_kl + offs_d[:, None], mask=key_valid[None, :], other=0.0)
    qk = tl.dot(q, k) * qk_scale  # [BLOCK, BLOCK], log2 domain
    qk = tl.where(key_valid[None, :], qk, float("-inf"))
    # Every block the kernel visits holds at least one valid key, so m_new is finite for every row.
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    v = tl.load(v_base + keys[:, None] * stride_vl + offs_d[None, :], mask=key_valid[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _sta_forward(Q, K, V, O,
                 stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                 stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
                 heads, text_tokens, height, width, n_tiles_h, n_tiles_w, win_h, win_w, n_text_programs,
                 qk_scale,
                 TILE_H: tl.constexpr, TILE_W: tl.constexpr, PAD_TW: tl.constexpr, BLOCK: tl.constexpr,
                 HEAD_DIM: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    batch, head = bh // heads, bh % heads
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    o_base = O + batch * stride_ob + head * stride_oh
    seq_len = text_tokens + height * width

    offs_d = tl.arange(0, HEAD_DIM)
    lane = tl.arange(0, BLOCK)
    # Lane -> (row, column) inside a padded tile: PAD_TH rows of PAD_TW lanes, TILE_H x TILE_W of them real.
    lane_r = lane // PAD_TW
    lane_c = lane % PAD_TW
    in_tile = (lane_r < TILE_H) & (lane_c < TILE_W)

    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)

    if pid < n_text_programs:
        # ---- text queries: dense over all keys, contiguous blocks
        rows = pid * BLOCK + lane
        row_valid = rows < text_tokens
        q = tl.load(q_base + rows[:, None] * stride_ql + offs_d[None, :], mask=row_valid[:, None], other=0.0)
        for start in range(0, seq_len, BLOCK):
            keys = start + lane
            acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, keys, keys < seq_len,
                                          stride_kl, stride_vl, offs_d, qk_scale)
    else:
        # ---- one query tile of the row-major grid
        tile = pid - n_text_programs
        tile_r = tile // n_tiles_w
        tile_c = tile % n_tiles_w
        q_r = tile_r * TILE_H + lane_r
        q_c = tile_c * TILE_W + lane_c
        row_valid = in_tile & (q_r < height) & (q_c < width)
        rows = text_tokens + q_r * width + q_c
        q = tl.load(q_base + rows[:, None] * stride_ql + offs_d[None, :], mask=row_valid[:, None], other=0.0)
        # stage 1: every text key, contiguous blocks
        for start in range(0, text_tokens, BLOCK):
            keys = start + lane
            acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, keys, keys < text_tokens,
                                          stride_kl, stride_vl, offs_d, qk_scale)
        # stage 2: the clamped window of key tiles, each th rows of tw contiguous tokens (stride W)
        win_r0 = tl.minimum(tl.maximum(tile_r - win_h // 2, 0), n_tiles_h - win_h)
        win_c0 = tl.minimum(tl.maximum(tile_c - win_w // 2, 0), n_tiles_w - win_w)
        for w in range(win_h * win_w):
            k_r = (win_r0 + w // win_w) * TILE_H + lane_r
            k_c = (win_c0 + w % win_w) * TILE_W + lane_c
            key_valid = in_tile & (k_r < height) & (k_c < width)
            keys = text_tokens + k_r * width + k_c
            acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, keys, key_valid,
                                          stride_kl, stride_vl, offs_d, qk_scale)

    # ---- epilogue: normalize and store the valid rows
    out = acc / l_i[:, None]
    tl.store(o_base + rows[:, None] * stride_ol + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_valid[:, None])


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: StaGeometry) -> None:
    """Raise ValueError naming the first thing the kernel cannot take."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must all be [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[2] != geometry.seq_len:
        raise ValueError(f"sequence length {q.shape[2]} != {geometry.text_tokens} text + "
                         f"{geometry.height}x{geometry.width} image tokens = {geometry.seq_len}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share dtype and device")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v must be contiguous in the head dimension (stride(-1) == 1)")
    head_dim = q.shape[-1]
    if q.device.type == "cuda":
        if q.dtype not in GPU_DTYPES:
            raise ValueError(f"dtype {q.dtype} is not supported on GPU; use one of {GPU_DTYPES}")
        if head_dim not in GPU_HEAD_DIMS:
            raise ValueError(f"head dim {head_dim} is not supported on GPU; use one of {GPU_HEAD_DIMS}")
    elif q.device.type == "cpu" and interpreter_active():
        if q.dtype not in (*GPU_DTYPES, torch.float32):
            raise ValueError(f"dtype {q.dtype} is not supported by the interpreter path")
        if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
            raise ValueError(f"head dim {head_dim} must be a power of two in 16..256")
    else:
        raise ValueError(f"the STA kernel runs on CUDA, or on the CPU with TRITON_INTERPRET=1; got {q.device}")


def sta_config(geometry: StaGeometry, head_dim: int, dtype: torch.dtype,
               device: torch.device) -> tuple[KernelConfig, str]:
    """The launch config for this problem on this device, and where it came from."""
    tile_tokens = geometry.tile[0] * geometry.tile[1]
    key = config_key(head_dim, dtype, geometry.seq_len, tile_tokens)
    return lookup("sta", device_arch(device), key, default_config(tile_tokens))


def default_config(tile_tokens: int) -> KernelConfig:
    """What runs without a tuned entry: the safe default, with one stage at tiles over 64 tokens (its two
    stages need ~288 KB of shared memory at 128-token tiles; an H100 and an H200 have 227 KB)."""
    return replace(DEFAULTS["sta"], num_stages=1) if tile_tokens > 64 else DEFAULTS["sta"]


def sta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int,
                  text_tokens: int, tile: tuple[int, int] = (8, 8), window: tuple[int, int] = (3, 3),
                  config: KernelConfig | None = None, scale: float | None = None) -> torch.Tensor:
    """Sliding tile attention of q, k, v [B, H, L, D] in ``[text | row-major image]`` order.

    ``config`` (a `KernelConfig`; only num_warps and num_stages apply) defaults to the tuned entry for
    this problem; the tuner passes its candidates here explicitly.
    """
    geometry = StaGeometry(height, width, text_tokens, tuple(tile), tuple(window))
    check_inputs(q, k, v, geometry)
    if config is None:
        config, _ = sta_config(geometry, q.shape[-1], q.dtype, q.device)
    batch, heads, _, head_dim = q.shape
    out = torch.empty_like(q)
    n_tiles_h, n_tiles_w = geometry.n_tiles
    win_h, win_w = geometry.effective_window
    grid = (geometry.text_programs + n_tiles_h * n_tiles_w, batch * heads)
    qk_scale = (head_dim ** -0.5 if scale is None else scale) * LOG2_E
    _sta_forward[grid](
        q, k, v, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        heads, text_tokens, height, width, n_tiles_h, n_tiles_w, win_h, win_w, geometry.text_programs,
        qk_scale,
        TILE_H=geometry.tile[0], TILE_W=geometry.tile[1], PAD_TW=geometry.padded_tile[1],
        BLOCK=geometry.block, HEAD_DIM=head_dim, num_warps=config.num_warps, num_stages=config.num_stages)
    return out
