"""End-to-end Flux path on the CPU (tiny Flux config, fp32): processors, permutation, random weights, rows.

The model has Flux's architecture at toy size (2 double + 2 single blocks, 2 heads of dim 16) on an 8x8 or
6x8 token grid with 16 text tokens. HilbertA runs through its Triton kernel in the interpreter
(``TRITON_INTERPRET=1``; skipped otherwise).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from baselines.base import KeyOrder  # noqa: E402
from baselines.registry import resolve  # noqa: E402
from diffusers.models.embeddings import apply_rotary_emb  # noqa: E402
from harness.apps.e2e import flux_model as fm  # noqa: E402
from harness.apps.e2e import measure  # noqa: E402
from harness.apps.e2e import processors as pr  # noqa: E402
from harness.apps.e2e.key_order import copy_in_order, linear_in_order, rotary_in_order  # noqa: E402
from harness.apps.e2e.settings import E2ESettings  # noqa: E402
from kernels.curves import curve_order  # noqa: E402
from tests.helpers import RowCollector

TEXT_TOKENS = 16
GRIDS = {"8x8": (128, 128), "6x8": (128, 96)}  # pixels, width x height
TINY = fm.model_spec("tiny")


@pytest.fixture(scope="module")
def model():
    return fm.build_transformer(TINY, "cpu", torch.float32, seed=0)


def _inputs(grid: str, seed: int = 0) -> tuple:
    problem = fm.flux_problem(TINY, *GRIDS[grid], TEXT_TOKENS, "float32")
    return problem, fm.random_inputs(TINY, problem, "cpu", torch.float32, seed=seed)


@torch.inference_mode()
def _forward(model, processors: dict, inputs, order=None) -> torch.Tensor:
    pr.install(model, processors)
    return pr.transformer_forward(model, inputs, order)


def _assert_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    rel = float((out - ref).norm() / ref.norm())
    assert rel < rtol, f"relative difference {rel:.3g}"


def _method_or_skip(spec: dict):
    method = resolve(spec)
    avail = method.availability("cpu")
    if not avail:
        pytest.skip(f"{method.name}: {avail.reason}")
    return method


# ---- our processor is diffusers' processor ----------------------------------------------------------------

@pytest.mark.parametrize("contiguous_qkv", [False, True], ids=["qkv-views", "qkv-contiguous"])
@pytest.mark.parametrize("fused", [False, True], ids=["separate-qkv", "fused-qkv"])
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_default_processor_equals_diffusers_flux_processor(grid, fused, contiguous_qkv):
    model = fm.build_transformer(TINY, "cpu", torch.float32, seed=3)
    if fused:
        model.fuse_qkv_projections()
    _, inputs = _inputs(grid, seed=1)
    expected = _forward(model, pr.diffusers_processors(model), inputs)
    got = _forward(model, pr.method_processors(model, contiguous_qkv=contiguous_qkv), inputs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # and the output depends on the attention: a processor that dropped the text stream would differ
    no_text = _forward(model, pr.method_processors(model), fm.FluxInputs(**{
        **inputs.model_kwargs(), "encoder_hidden_states": torch.zeros_like(inputs.encoder_hidden_states)}))
    assert float((no_text - expected).norm() / expected.norm()) > 1e-2


@pytest.mark.parametrize("contiguous_qkv", [False, True])
def test_processor_hands_the_method_views_or_contiguous_copies(model, contiguous_qkv):
    seen = []

    def spy(q, k, v):
        seen.append((q.shape, all(x.is_contiguous() for x in (q, k, v))))
        return pr.sdpa_attention(q, k, v)

    problem, inputs = _inputs("6x8")
    _forward(model, pr.method_processors(model, [spy] * TINY.num_attention_layers, contiguous_qkv=contiguous_qkv),
             inputs)
    heads, head_dim = TINY.transformer["num_attention_heads"], TINY.transformer["attention_head_dim"]
    assert seen == [((1, heads, problem.seq_len, head_dim), contiguous_qkv)] * TINY.num_attention_layers


# ---- one processor per layer --------------------------------------------------------------------------------

@pytest.mark.parametrize("double, single", [(1, 2), (2, 1), (3, 4)])
def test_processor_dict_covers_every_layer_in_module_order(double, single):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**{**TINY.transformer, "num_layers": double, "num_single_layers": single})
    processors = pr.method_processors(model)
    assert set(processors) == set(model.attn_processors)
    pr.install(model, processors)
    for i, block in enumerate(model.transformer_blocks):
        assert block.attn.processor.layer == i
    for j, block in enumerate(model.single_transformer_blocks):
        assert block.attn.processor.layer == double + j
    assert sorted(p.layer for p in processors.values()) == list(range(double + single))


@pytest.mark.parametrize("name", ["transformer_blocks.0.attn", "blocks.3.attn.processor",
                                  "single_transformer_blocks.x.attn.processor"])
def test_unexpected_processor_names_are_refused(name):
    with pytest.raises(ValueError, match="unexpected attention processor"):
        pr.layer_index(name, 19)


def test_layer_index_counts_single_blocks_after_double_blocks():
    assert pr.layer_index("transformer_blocks.18.attn.processor", 19) == 18
    assert pr.layer_index("single_transformer_blocks.0.attn.processor", 19) == 19
    assert pr.layer_index("single_transformer_blocks.37.attn.processor", 19) == 56


# ---- the once-per-forward permutation -----------------------------------------------------------------------

def _orders(problem) -> dict[str, torch.Tensor]:
    n = problem.image_tokens
    return {"hilbert": curve_order(problem.height, problem.width, "hilbert"),
            "random": torch.randperm(n, generator=torch.Generator().manual_seed(0)),
            "reversed": torch.arange(n - 1, -1, -1)}


@pytest.mark.parametrize("order_name", ["hilbert", "random", "reversed"])
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_permutation_round_trips_and_ids_travel_with_tokens(grid, order_name):
    problem, inputs = _inputs(grid)
    order = pr.TokenOrder.from_image_order(_orders(problem)[order_name], "cpu")
    permuted = order.permute(inputs)
    assert torch.equal(order.restore(permuted.hidden_states), inputs.hidden_states)
    assert torch.equal(order.restore(permuted.img_ids[None])[0], inputs.img_ids)
    # position p holds the token of row-major index order[p], with that token's (row, col) id
    rows, cols = order.order // problem.width, order.order % problem.width
    assert torch.equal(permuted.img_ids[:, 1:], torch.stack([rows, cols], dim=1).float())
    assert torch.equal(permuted.hidden_states[0, 5], inputs.hidden_states[0, order.order[5]])
    assert torch.equal(permuted.encoder_hidden_states, inputs.encoder_hidden_states)  # text untouched


@pytest.mark.parametrize("order_name", ["hilbert", "random"])
def test_dense_model_is_invariant_to_the_permutation(model, order_name):
    """RoPE is computed from the permuted ids, so a permuted dense forward restores to the same output."""
    problem, inputs = _inputs("6x8")
    order = pr.TokenOrder.from_image_order(_orders(problem)[order_name], "cpu")
    expected = _forward(model, pr.method_processors(model), inputs)
    _assert_close(_forward(model, pr.method_processors(model), inputs, order), expected)
    # permuting the latents without their ids is a different model input: the test can tell
    wrong = fm.FluxInputs(**{**inputs.model_kwargs(), "hidden_states": inputs.hidden_states[:, order.order]})
    wrong_out = order.restore(_forward(model, pr.method_processors(model), wrong))
    assert float((wrong_out - expected).norm() / expected.norm()) > 1e-2


@pytest.mark.parametrize("bad", [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 4])])
def test_token_order_refuses_a_non_permutation(bad):
    with pytest.raises(ValueError, match="not a permutation"):
        pr.TokenOrder.from_image_order(bad, "cpu")


# ---- HilbertA inside Flux -----------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_dense_hilberta_layout_reproduces_the_dense_model(model, grid):
    """One tile and no centre: every query sees every key, so HilbertA (permutation included) is dense."""
    method = _method_or_skip({"method": "hilberta", "tiles": 1, "centre": 0.0})
    problem, inputs = _inputs(grid)
    layers = pr.prepare_layers(method, problem, "cpu", TINY.num_attention_layers)
    assert layers[0].token_density == 1.0
    order = pr.TokenOrder.from_image_order(layers[0].image_order, "cpu")
    assert not torch.equal(order.order, torch.arange(problem.image_tokens)), "the curve should reorder tokens"
    expected = _forward(model, pr.diffusers_processors(model), inputs)
    got = _forward(model, pr.method_processors(model, [p.run for p in layers]), inputs, order)
    _assert_close(got, expected, rtol=1e-4)


def test_sparse_hilberta_uses_each_layers_own_mask(model):
    """T=2 with a centre: the sliding offset differs per layer; the kernel in layer l must match SDPA under
    layer l's exact mask (a processor wired to the wrong layer would not)."""
    method = _method_or_skip({"method": "hilberta", "tiles": 2, "centre": 0.25})
    problem, inputs = _inputs("8x8")
    layers = pr.prepare_layers(method, problem, "cpu", TINY.num_attention_layers)
    masks = [p.dense_mask() for p in layers]
    assert not torch.equal(masks[0], masks[1]), "layers 0 and 1 should slide differently"
    order = pr.TokenOrder.from_image_order(layers[0].image_order, "cpu")

    def masked_sdpa(mask):
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    expected = _forward(model, pr.method_processors(model, [masked_sdpa(m) for m in masks]), inputs, order)
    got = _forward(model, pr.method_processors(model, [p.run for p in layers]), inputs, order)
    _assert_close(got, expected, rtol=1e-4)
    shuffled = _forward(model, pr.method_processors(model, [masked_sdpa(m) for m in masks[1:] + masks[:1]]),
                        inputs, order)
    assert float((shuffled - expected).norm() / expected.norm()) > 1e-2


# ---- K and V in a method's key order -------------------------------------------------------------------------

SEGMENTS = ((0, 20), (40, 80), (20, 40))  # 16 text tokens: the first segment crosses into the image


def _unarranged(x: torch.Tensor, segments) -> torch.Tensor:
    """[B, H, L, D] with keys in ``segments`` order -> the sequence order."""
    index = torch.cat([torch.arange(a, b) for a, b in segments])
    return x[:, :, torch.argsort(index)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_order_writers_equal_the_op_then_a_rearranging_copy(dtype):
    gen = torch.Generator().manual_seed(0)
    arrange = KeyOrder(SEGMENTS, run=None).arrange
    x = torch.randn(2, 80, 3, 16, generator=gen).to(dtype)
    freqs = (torch.randn(80, 16, generator=gen), torch.randn(80, 16, generator=gen))
    assert torch.equal(rotary_in_order(x, freqs, SEGMENTS), arrange(apply_rotary_emb(x, freqs, sequence_dim=1), 1))
    assert torch.equal(rotary_in_order(x, None, SEGMENTS), arrange(x, 1))
    parts = [(x[:, :16], 0), (x[:, 16:], 16)]
    assert torch.equal(copy_in_order(parts, SEGMENTS), arrange(x, 1))
    h = torch.randn(2, 80, 24, generator=gen).to(dtype)
    plain, wrapped = torch.nn.Linear(24, 8), torch.nn.Sequential(torch.nn.Linear(24, 8))  # one GEMM a segment; whole
    for linear, grad in ((plain, False), (torch.nn.Linear(24, 8, bias=False), False), (wrapped, False), (plain, True)):
        linear = linear.to(dtype)
        with torch.set_grad_enabled(grad):  # the end-to-end path runs without autograd (GEMMs with out=)
            got = linear_in_order(linear, h, SEGMENTS)
        torch.testing.assert_close(got, arrange(linear(h), 1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fused", [False, True], ids=["separate-qkv", "fused-qkv"])
def test_processor_writes_k_and_v_in_the_offered_key_order(fused):
    """Each layer's run gets K and V laid out in its order (q as given): un-arranged under a mask of the sequence
    order they reproduce the model; handed on as given, they would not (a mask tells key positions apart)."""
    model = fm.build_transformer(TINY, "cpu", torch.float32, seed=4)
    if fused:
        model.fuse_qkv_projections()
    problem, inputs = _inputs("8x8")
    assert problem.seq_len == 80
    gen = torch.Generator().manual_seed(1)
    masks = [(torch.rand(80, 80, generator=gen) < 0.5) | torch.eye(80, dtype=torch.bool)
             for _ in range(TINY.num_attention_layers)]
    masked = [lambda q, k, v, m=m: F.scaled_dot_product_attention(q, k, v, attn_mask=m) for m in masks]
    expected = _forward(model, pr.method_processors(model, masked), inputs)
    orders = [KeyOrder(SEGMENTS, run=lambda q, k, v, f=f: f(q, _unarranged(k, SEGMENTS), _unarranged(v, SEGMENTS)))
              for f in masked]
    got = _forward(model, pr.method_processors(model, masked, key_orders=orders), inputs)
    _assert_close(got, expected, rtol=1e-5)
    as_given = [KeyOrder(SEGMENTS, run=f) for f in masked]
    wrong = _forward(model, pr.method_processors(model, masked, key_orders=as_given), inputs)
    assert float((wrong - expected).norm() / expected.norm()) > 1e-2


def test_a_contender_counts_and_names_the_layers_written_in_key_order(model):
    """A method offering key orders at odd layers: the contender's processors get them there and its row says so."""
    from baselines.base import Method, PreparedAttention
    from harness.apps.e2e.contenders import method_contender, qkv_layout

    def build(problem, device):
        order = KeyOrder(SEGMENTS, run=pr.sdpa_attention) if problem.layer % 2 else None
        return PreparedAttention(method="odd", problem=problem, backend="sdpa", run=pr.sdpa_attention,
                                 image_order=None, mask_rows=None, allowed_pairs=problem.seq_len**2,
                                 computed_pairs=problem.seq_len**2, key_order=order)

    problem, _ = _inputs("8x8")
    contender = method_contender(Method("odd", "odd", "dense", build=build), model, problem, torch.device("cpu"),
                                 contiguous_qkv=False)
    layers = TINY.num_attention_layers
    assert contender.ordered_layers == layers // 2
    processors = contender.make_processors(None)
    assert [p.key_order is not None for p in processors.values()] == [
        pr.layer_index(name, len(model.transformer_blocks)) % 2 == 1 for name in processors]
    assert f"K and V of {layers // 2} layers written in the method's key order" in qkv_layout(contender, False)


# ---- model building, inputs, sampling -----------------------------------------------------------------------

def test_random_weights_cover_every_parameter(model):
    """Every parameter is drawn (to_empty leaves garbage): N(0, std), norm weights N(1, std)."""
    norms, std = fm.norm_types(), TINY.init_std
    seen_norm = False
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_norm_weight = name == "weight" and isinstance(module, norms)
            seen_norm |= is_norm_weight
            centred = param - (1.0 if is_norm_weight else 0.0)
            assert torch.isfinite(param).all() and centred.abs().max() < 6 * std, name
            if param.numel() >= 256:
                assert abs(float(centred.mean())) < 0.2 * std and 0.8 < float(centred.std()) / std < 1.2, name
    assert seen_norm


def test_random_model_output_is_finite_and_seeded():
    _, inputs = _inputs("8x8")
    a = fm.build_transformer(TINY, "cpu", torch.float32, seed=5)
    b = fm.build_transformer(TINY, "cpu", torch.float32, seed=5)
    c = fm.build_transformer(TINY, "cpu", torch.float32, seed=6)
    out_a, out_b, out_c = (_forward(m, pr.diffusers_processors(m), inputs) for m in (a, b, c))
    assert torch.isfinite(out_a).all() and out_a.std() > 1e-3
    assert torch.equal(out_a, out_b)
    assert not torch.allclose(out_a, out_c)


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_unpack_latents_puts_each_patch_channel_at_its_latent_cell(grid):
    """FluxPipeline packs latent[c, 2r+dy, 2q+dx] into token r*W+q, channel c*4 + dy*2 + dx."""
    problem, inputs = _inputs(grid)
    width_px, height_px = GRIDS[grid]
    latent = fm.unpack_latents(inputs.hidden_states, height_px, width_px)
    assert latent.shape == (1, TINY.vae["latent_channels"], height_px // 8, width_px // 8)
    tokens = inputs.hidden_states[0]
    for r, q, c, dy, dx in [(0, 0, 0, 0, 1), (1, 2, 3, 1, 0), (problem.height - 1, problem.width - 1, 2, 1, 1)]:
        assert latent[0, c, 2 * r + dy, 2 * q + dx] == tokens[r * problem.width + q, c * 4 + dy * 2 + dx]


def test_image_ids_are_zero_row_col_in_row_major_order():
    ids = fm.image_ids(6, 8, "cpu")
    assert ids.shape == (48, 3) and ids.dtype == torch.float32
    assert ids[:, 0].eq(0).all()
    assert ids[13].tolist() == [0.0, 1.0, 5.0] and ids[47].tolist() == [0.0, 5.0, 7.0]


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_flow_sigmas_run_from_one_to_zero(steps):
    sigmas = fm.flow_sigmas(steps, 4096)
    assert len(sigmas) == steps + 1 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


def test_tiny_vae_decodes_to_the_image_size():
    vae = fm.build_vae(TINY, "cpu", torch.float32)
    _, inputs = _inputs("6x8")
    with torch.inference_mode():
        image = fm.decode(vae, inputs.hidden_states, 96, 128)
    assert image.shape == (1, 3, 96, 128) and torch.isfinite(image).all()


def test_weights_dir_without_a_transformer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no transformer weights"):
        fm.build_transformer(TINY, "cpu", torch.float32, weights_dir=tmp_path)


# ---- timing hooks, settings and rows ------------------------------------------------------------------------

def test_attention_timer_reports_every_layer_of_every_forward(model):
    _, inputs = _inputs("8x8")
    timer = pr.AttentionTimer(torch.device("cpu"))
    for _ in range(2):
        _forward(model, pr.method_processors(model, timer=timer), inputs)
    forwards = timer.collect()
    assert [sorted(f) for f in forwards] == [list(range(TINY.num_attention_layers))] * 2
    assert all(ms > 0 for f in forwards for ms in f.values())
    assert timer.collect() == []


@pytest.mark.parametrize("section, message", [
    ({"resolution": ["1024x1024"]}, "unknown key 'resolution'"),
    ({"resolutions": ["1024"]}, "WIDTHxHEIGHT"),
    ({"resolutions": ["1000x1000"]}, "not a multiple of 16"),
    ({"skip_denoise": "yes"}, "skip_denoise: expected true or false, got 'yes'"),
    ({"max_denoise_s": 0}, "max_denoise_s: expected a number > 0, got 0"),
    ({"steps": 0}, "steps: expected an integer >= 1, got 0"),
    ({"guidance": float("nan")}, "guidance: expected a number"),
    ({"weights": 3}, "weights: expected a string"),
    ({"model": "flux-schnell"}, "unknown model"),
    ({"dtype": "int8"}, "dtype"),
])
def test_bad_settings_are_refused(section, message):
    with pytest.raises(ValueError, match=message):
        E2ESettings.from_section(section)


def test_settings_from_a_suite_table():
    settings = E2ESettings.from_section({"resolutions": ["1536x1024", 2048], "methods": ["hilberta"]})
    assert settings.resolutions == ((1536, 1024), (2048, 2048))
    assert settings.steps == 28 and settings.to_dict()["resolutions"] == ["1536x1024", "2048x2048"]



TINY_SECTION = {"model": "tiny", "dtype": "float32", "text_tokens": TEXT_TOKENS, "resolutions": ["128x96"],
                "methods": ["sdpa_math", "hilberta_flex", "sdpa_cudnn"], "steps": 1, "step_repeats": 1}


def test_run_e2e_cases_writes_one_row_per_method():
    results = RowCollector()
    rows = measure.run_e2e_cases(TINY_SECTION, results, "cpu")
    assert rows == results.cases
    by_method = {row["method"]: row for row in rows}
    assert [row["case"].split("/e2e/")[1] for row in rows][0] == measure.REFERENCE
    assert set(by_method) == {measure.REFERENCE, "sdpa_math", "hilberta_flex_t16", "sdpa_cudnn"}
    assert by_method["sdpa_cudnn"]["status"] == "unavailable"  # no CUDA here: a row with the reason
    for name in (measure.REFERENCE, "sdpa_math", "hilberta_flex_t16"):
        row = by_method[name]
        assert row["kind"] == "e2e" and row["case"] == f"128x96/e2e/{name}", row
        assert row["status"] == "ok", row["reason"]
        assert len(row["samples_ms"]) == 1 and row["median_ms"] > 0
        e2e = row["e2e"]
        assert 0 < e2e["attention_share"] <= 1
        assert len(e2e["attention_ms_by_layer"]) == TINY.num_attention_layers
        assert e2e["denoise_ms"] > 0 and e2e["vae_decode_ms"] > 0 and e2e["steps"] == 1
        assert e2e["vae_decode_mode"] == "full"
        assert e2e["key_order_layers"] == 0  # none of these offers a key order
        assert row["power"]["status"] == "unavailable"
        assert row["correctness"]["note"] == measure.OUTPUT_CHECK
    assert by_method["sdpa_math"]["e2e"]["output_rel_diff_vs_dense"] < 1e-5  # dense is dense
    sparse = by_method["hilberta_flex_t16"]
    assert sparse["e2e"]["output_rel_diff_vs_dense"] > 1e-4  # sparse attention changes the output
    assert sparse["setup_ms"]["permute"] > 0 and "derived" in sparse
    assert "permute" not in by_method["sdpa_math"]["setup_ms"]


INTERLEAVED = {**TINY_SECTION, "methods": ["sdpa_math", "hilberta_flex"], "step_repeats": 4}


def test_steps_of_every_contender_are_interleaved_in_a_fresh_order_each_round(monkeypatch):
    """One step of each contender per round, in a new random order (same conditions under a power cap)."""
    seen = []

    class Recording(pr.Switch):
        def __setattr__(self, key, value):
            if key == "current" and value is not None:
                seen.append(value)
            super().__setattr__(key, value)

    monkeypatch.setattr(pr, "Switch", Recording)
    rows = measure.run_e2e_cases(INTERLEAVED, RowCollector(), "cpu")
    names = {measure.REFERENCE, "sdpa_math", "hilberta_flex_t16"}
    assert {row["method"] for row in rows} == names and all(row["status"] == "ok" for row in rows)
    rounds = [seen[i:i + 3] for i in range(0, len(seen), 3)]
    assert len(seen) % 3 == 0 and len(rounds) >= 4 and all(set(r) == names for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # a fresh order, not one fixed order repeated
    assert all(len(row["samples_ms"]) == 4 and row["e2e"]["step_timing"].startswith("interleaved") for row in rows)


def test_a_contender_whose_step_fails_is_dropped_and_the_others_are_timed(monkeypatch):
    switched = measure._switched_forward

    def failing(res, contender, switch):
        if contender.name != "sdpa_math":
            return switched(res, contender, switch)

        def step():
            raise RuntimeError("launch failed")
        return step

    monkeypatch.setattr(measure, "_switched_forward", failing)
    by_method = {row["method"]: row for row in measure.run_e2e_cases(INTERLEAVED, RowCollector(), "cpu")}
    failed = by_method["sdpa_math"]
    assert failed["status"] == "failed" and "interleaved step" in failed["reason"] and "launch failed" in failed["reason"]
    assert by_method[measure.REFERENCE]["status"] == by_method["hilberta_flex_t16"]["status"] == "ok"
    assert len(by_method["hilberta_flex_t16"]["samples_ms"]) == 4


def test_interleaving_that_fails_as_a_whole_records_every_contender_and_goes_on(monkeypatch):
    def out_of_luck(res, contenders):
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(measure, "interleaved_steps", out_of_luck)
    rows = measure.run_e2e_cases({**INTERLEAVED, "resolutions": ["128x96", "128x128"]}, RowCollector(), "cpu")
    assert len(rows) == 6 and all(row["status"] == "failed" for row in rows)
    assert all("interleaved steps: RuntimeError: CUDA error" in row["reason"] for row in rows)


def test_switch_processor_runs_the_named_contenders_processor_with_diffusers_arguments():
    import inspect

    switch, calls = pr.Switch(), []
    layers = {name: {"blocks.0": lambda *args, name=name: calls.append((name, args)) or name} for name in ("a", "b")}
    installed = pr.switch_processors(layers, switch)
    switch.current = "b"
    assert installed["blocks.0"]("attn", "hidden", "text", None, "rope") == "b"
    assert calls == [("b", ("attn", "hidden", "text", None, "rope"))]
    # diffusers hands a processor only the keywords its __call__ names: the same names as FluxAttnProcessor's
    expected = set(inspect.signature(pr.FluxAttnProcessor().__call__).parameters)
    assert set(inspect.signature(installed["blocks.0"].__call__).parameters) == expected


def test_run_e2e_cases_without_diffusers_reports_every_case_unavailable(monkeypatch):
    monkeypatch.setattr(measure, "processors", None)
    rows = measure.run_e2e_cases({**TINY_SECTION, "resolutions": ["128x128", "128x96"]}, RowCollector(), "cpu")
    assert len(rows) == 2 * 4
    assert all(row["status"] == "unavailable" and row["reason"] for row in rows)


def test_flux_dev_on_cpu_is_unavailable_not_built():
    rows = measure.run_e2e_cases({"resolutions": ["1024x1024"], "methods": ["sdpa_math"]}, RowCollector(), "cpu")
    assert [row["status"] for row in rows] == ["unavailable", "unavailable"]
    assert "CUDA" in rows[0]["reason"]


@pytest.mark.gpu
def test_run_e2e_cases_on_cuda_with_the_tiny_model():
    """The CUDA branches (events around attention, peak memory, NVML energy) on a model that builds in seconds."""
    section = {**TINY_SECTION, "dtype": "bfloat16", "methods": ["sdpa_cudnn", "hilberta"], "step_repeats": 3}
    rows = measure.run_e2e_cases(section, RowCollector(), "cuda")
    assert [row["status"] for row in rows] == ["ok"] * 3, [row["reason"] for row in rows]
    for row in rows:
        e2e = row["e2e"]
        assert e2e["attention_timing"].startswith("CUDA events")
        assert e2e["peak_memory_bytes"] >= e2e["baseline_memory_bytes"] > 0
        assert row["power"]["status"] in ("ok", "unavailable")
        if row["power"]["status"] == "ok":
            assert e2e["joules_per_image"] > 0
    assert rows[-1]["backend"] == "triton-hilberta" and rows[-1]["setup_ms"]["permute"] > 0
