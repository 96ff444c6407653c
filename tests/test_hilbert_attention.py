"""HilbertA's Triton kernel against the exact reference (SDPA math with the layout's dense mask).

On CPU the kernel runs in the Triton interpreter (fp32/fp16; bf16 is wrong there); the `gpu` tests check
bf16 at the Flux shapes on a real GPU and skip cleanly elsewhere.
"""

import pytest
import torch

from kernels import HilbertLayout, KernelConfig, hilbert_attention, reference_attention, relative_error

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}

# (height, width, text, tiles, centre, curve): square and non-square, with and without text and centre,
# T in {1, 4, 16, odd}; tile lengths are not multiples of the block sizes in most of them
CASES = [
    (8, 8, 0, 1, 0.0, "hilbert"),
    (16, 16, 16, 4, 0.25, "hilbert"),
    (16, 16, 0, 16, 0.25, "hilbert"),
    (16, 16, 24, 16, 0.0, "closed"),
    (12, 20, 8, 5, 0.25, "hilbert"),
    (10, 24, 16, 7, 0.25, "closed"),
    (6, 7, 3, 7, 0.3, "raster"),
    (9, 13, 5, 3, 0.0, "hilbert"),
]
CONFIGS = [
    KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1),
    KernelConfig(block_m=32, block_n=16, num_warps=4, num_stages=1, flat_loop=True),
    KernelConfig(block_m=16, block_n=32, num_warps=4, num_stages=1, tma=True),
    KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, head_major=True),
    # the shapes of the stored H100 entries: TMA and head-major, with and without the flat loop
    KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, tma=True, head_major=True),
    KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, flat_loop=True, tma=True, head_major=True),
]


def check(layout, layer, dtype, device, config=None, batch=2, heads=1, head_dim=16, seed=None):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed) if seed is not None else gen.seed()  # fresh random inputs each check
    q, k, v = (torch.randn(batch, heads, layout.seq_len, head_dim, generator=gen, device=device, dtype=dtype)
               for _ in range(3))
    out = hilbert_attention(q, k, v, layout, layer, config=config)
    ref = reference_attention(q, k, v, lambda rows: layout.mask_rows(rows, layer))
    err = relative_error(out, ref)
    assert err <= TOL[dtype], f"{layout} layer {layer}: relative error {err:.2e}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}x{}_txt{}_T{}_f{}_{}".format(*c))
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_matches_reference_every_phase(case, layer, device):
    h, w, text, tiles, centre, curve = case
    check(HilbertLayout(h, w, text, tiles, centre, curve), layer, torch.float32, device)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_loop_variants_and_dtypes(config, dtype, device):
    check(HilbertLayout(12, 20, 8, 5), 3, dtype, device, config=config, head_dim=32)


@pytest.mark.parametrize("text,centre", [(8, 0.25), (0, 0.0)])  # with and without heavy (shared-row) blocks
def test_head_major_order_covers_every_block(text, centre, device):
    config = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, head_major=True)
    check(HilbertLayout(10, 12, text, 4, centre), 2, torch.float32, device, config=config, batch=2, heads=2)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_flux_head_dims(head_dim, device):
    check(HilbertLayout(8, 8, 8, 3), 1, torch.float16, device, batch=1, heads=2, head_dim=head_dim)


def test_strided_inputs_are_accepted(device):
    """q, k, v as views of one [B, L, 3, H, D] projection, as attention processors produce them."""
    layout = HilbertLayout(8, 8, 4, 3)
    qkv = torch.randn(1, layout.seq_len, 3, 2, 16, device=device)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out = hilbert_attention(q, k, v, layout, 2)
    ref = reference_attention(q, k, v, lambda rows: layout.mask_rows(rows, 2))
    assert relative_error(out, ref) <= TOL[torch.float32]


def inputs(length, shape_tail=(16,), dtype=torch.float32, device="cpu"):
    return [torch.randn(1, 2, length, *shape_tail, dtype=dtype, device=device) for _ in range(3)]


@pytest.mark.parametrize("mutate,message", [
    (lambda q, k, v, L: (q[0], k[0], v[0]), "batch, heads, seq_len, head_dim"),
    (lambda q, k, v, L: (q, k[:, :, :-1], v[:, :, :-1]), "shapes differ"),
    (lambda q, k, v, L: (q[:, :, :-1], k[:, :, :-1], v[:, :, :-1]), "does not match the layout"),
    (lambda q, k, v, L: (q, k.half(), v), "dtypes differ"),
    (lambda q, k, v, L: (q.double(), k.double(), v.double()), "not supported"),
    (lambda q, k, v, L: inputs(L, (24,)), "head dim 24"),
    (lambda q, k, v, L: (q.transpose(2, 3).contiguous().transpose(2, 3),) * 3, "contiguous"),
])
def test_bad_input_raises_clear_errors(mutate, message):
    layout = HilbertLayout(8, 8, 4, 3)
    q, k, v = mutate(*inputs(layout.seq_len), layout.seq_len)
    with pytest.raises((ValueError, TypeError), match=message):
        hilbert_attention(q, k, v, layout)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layout = HilbertLayout(8, 8, 4, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        hilbert_attention(*inputs(layout.seq_len), layout)


def test_layout_type_and_layer_are_checked():
    layout = HilbertLayout(8, 8, 4, 3)
    with pytest.raises(TypeError, match="HilbertLayout"):
        hilbert_attention(*inputs(layout.seq_len), "hilbert")
    with pytest.raises(ValueError, match="layer"):
        hilbert_attention(*inputs(layout.seq_len), layout, layer=-1)


# ---- GPU: bf16 at the Flux shapes --------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("side", [64, 128], ids=["1024x1024", "2048x2048"])
@pytest.mark.parametrize("tiles", [4, 16])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_flux_shapes_bf16_on_gpu(side, tiles, layer):
    layout = HilbertLayout(side, side, 512, tiles)
    q, k, v = (torch.randn(1, 24, layout.seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = hilbert_attention(q, k, v, layout, layer)
    # every shared row plus a random sample of local rows, against an fp32 reference
    rows = torch.cat([torch.arange(layout.shared_tokens),
                      torch.randint(layout.shared_tokens, layout.seq_len, (2048,))]).cuda()
    ref = reference_attention(q, k, v, lambda r: layout.mask_rows(r, layer), rows=rows)
    assert relative_error(out[:, :, rows], ref) <= 1e-2


@pytest.mark.parametrize("layout,block_m,expected", [
    (HilbertLayout(64, 64, 512, 16), 128, 6),  # 768 shared rows
    (HilbertLayout(64, 64, 512, 16), 100, 8),  # ceil(768 / 100)
    (HilbertLayout(16, 16, 0, 4, 0.0), 32, 0),  # no shared tokens
    (HilbertLayout(16, 16, 8, 1, 0.0), 32, 9),  # one tile, no centre: every block sweeps all keys
])
def test_heavy_blocks_counts_the_leading_full_sweeps(layout, block_m, expected):
    from kernels.hilbert_attention import heavy_blocks

    assert heavy_blocks(layout.block_table(0, block_m), layout.seq_len) == expected


@pytest.mark.parametrize("side,tiles", [(64, 16), (64, 4), (128, 16), (128, 4), (256, 16), (256, 4), (256, 64)])
def test_every_suite_problem_has_a_tuned_h100_entry(side, tiles):
    """No bench suite case at 1024/2048/4096 runs on the safe default on an H100 (issue #14)."""
    from kernels.config import config_key, config_space, lookup

    layout = HilbertLayout(side, side, 512, tiles)
    config, source = lookup("hilberta", "sm90", config_key(128, torch.bfloat16, layout.seq_len, layout.tile_len))
    assert source.startswith("sm90.json:"), f"{side * 16}x{side * 16} T={tiles}: {source}"
    assert config in config_space(128), f"stored {config.name} is outside the space the tuner searches"
