"""Attention processors that run a method's kernel inside Flux, and the once-per-forward token permutation.

`MethodAttnProcessor` does what diffusers' ``FluxAttnProcessor`` (0.42) does — q/k/v projections, RMSNorm on
q and k, the text stream projected separately and concatenated *first* in double blocks, RoPE with
diffusers' ``apply_rotary_emb``, output split and projections — but hands q, k, v as ``[B, H, L, D]`` views
(or contiguous copies, on request) to one attention function: a method's ``PreparedAttention.run`` for its
layer, or PyTorch SDPA (the default, which is what diffusers' native backend calls). Where the layer's method
offers a key order (``PreparedAttention.key_order``), K and V are written in it by the ops that write them
anyway (`harness.apps.e2e.key_order`) and go to the order's own ``run``. `method_processors` builds one
processor per attention layer, keyed as ``model.set_attn_processor`` wants, each knowing its layer index
counted over all blocks in module order (double blocks 0..N-1, then single blocks N..N+M-1).

Methods with an ``image_order`` (HilbertA) run on the image tokens in their own order. `TokenOrder`
permutes the packed latents *and* their RoPE ids once at the model's entry (the model computes RoPE from
``img_ids``, so each token keeps its position encoding) and restores the output once at exit; text tokens
stay first because the model concatenates them first. Everything between is per-token, so nothing else
changes. `AttentionTimer` brackets each attention call with CUDA events in an instrumented pass. `switch_processors`
installs several contenders' processors at once behind a `Switch`, for step timing interleaved across them.
Only public diffusers API is used (``set_attn_processor``, module attributes, ``apply_rotary_emb``);
`_qkv_projections` restates the private helper diffusers' processor calls (and `rotary_in_order` diffusers'
``apply_rotary_emb``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from baselines.base import KeyOrder, Method, PreparedAttention
from baselines.problem import Problem
from harness.apps.e2e.flux_model import FluxInputs
from harness.apps.e2e.key_order import copy_in_order, linear_in_order, rotary_in_order

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
PROCESSOR_NAME = re.compile(r"(?P<single>single_)?transformer_blocks\.(?P<index>\d+)\.attn\.processor")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense attention as diffusers' native backend runs it: PyTorch picks the SDPA kernel."""
    return F.scaled_dot_product_attention(q, k, v)


class AttentionTimer:
    """Times each attention call of a forward: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[int, object, object]] = []  # (layer, start, end)

    @property
    def description(self) -> str:
        clock = "CUDA events" if self.cuda else "perf_counter"
        return f"{clock} around every attention call, in a separate instrumented pass"

    def time(self, layer: int, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = call()
            end.record()
        else:
            start = time.perf_counter()
            out = call()
            end = time.perf_counter()
        self._marks.append((layer, start, end))
        return out

    def collect(self) -> list[dict[int, float]]:
        """Milliseconds per layer of each forward since the last collect (a forward starts at layer 0);
        clears the marks."""
        if self.cuda:
            torch.cuda.synchronize()
        forwards: list[dict[int, float]] = []
        for layer, start, end in self._marks:
            if layer == 0 or not forwards:
                forwards.append({})
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
            forwards[-1][layer] = forwards[-1].get(layer, 0.0) + ms
        self._marks.clear()
        return forwards


def _qkv_projections(attn, hidden_states, encoder_hidden_states, value: bool = True):
    """q, k, v of the image (or joint) stream and of the text stream (None in single blocks).

    Mirrors diffusers' private ``_get_qkv_projections`` through the modules' public attributes, fused
    projections (``fuse_qkv_projections()``) included. ``value=False``: v of the image stream is left to the
    caller (None) where it has a projection of its own.
    """
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
        value = attn.to_v(hidden_states) if value else None
    text = (None, None, None)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        if getattr(attn, "fused_projections", False):
            text = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            text = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                    attn.add_v_proj(encoder_hidden_states))
    return (query, key, value), text


class MethodAttnProcessor:
    """FluxAttnProcessor's math around one attention function for one layer.

    q, k, v reach the attention function as ``[B, H, L, D]`` views of the ``[B, L, H, D]`` projections, as
    diffusers hands them to SDPA; with ``contiguous_qkv`` they are copied to contiguous tensors first (some
    kernels take a faster path then), and the copies count as attention time. With a ``key_order``, K and V
    are written in that order (RoPE's cast, the concatenation, V's projection) and its ``run`` attends.
    """

    def __init__(self, layer: int, attention: AttentionFn = sdpa_attention, timer: AttentionTimer | None = None,
                 contiguous_qkv: bool = False, key_order: KeyOrder | None = None):
        self.layer = layer
        self.attention = attention if key_order is None else key_order.run
        self.timer = timer
        self.contiguous_qkv = contiguous_qkv
        self.key_order = key_order

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.contiguous_qkv:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return self.attention(q, k, v)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("MethodAttnProcessor does not take an attention mask (Flux passes none)")
        order = None if self.key_order is None else self.key_order.segments
        (query, key, value), (text_q, text_k, text_v) = _qkv_projections(
            attn, hidden_states, encoder_hidden_states, value=order is None or encoder_hidden_states is not None)

        # [B, L, inner] -> [B, L, heads, head_dim]
        heads = lambda x: x.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
        query = attn.norm_q(heads(query))
        key = attn.norm_k(heads(key))
        if text_q is not None:
            # double block: the text stream has its own projections and norms and goes first
            query = torch.cat([attn.norm_added_q(heads(text_q)), query], dim=1)
            key = torch.cat([attn.norm_added_k(heads(text_k)), key], dim=1)
            value = (torch.cat([heads(text_v), heads(value)], dim=1) if order is None
                     else copy_in_order([(heads(text_v), 0), (heads(value), text_v.shape[1])], order))
        elif order is not None:  # single block: V's projection writes it in order (or its output is copied)
            value = heads(linear_in_order(attn.to_v, hidden_states, order) if value is None
                          else copy_in_order([(value, 0)], order))
        else:
            value = heads(value)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        if order is not None:
            key = rotary_in_order(key, image_rotary_emb, order)
        elif image_rotary_emb is not None:
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, H, L, D] views
        if self.timer is None:
            out = self.attend(q, k, v)
        else:
            out = self.timer.time(self.layer, lambda: self.attend(q, k, v))
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out  # single block: the block's proj_out follows
        text_len = encoder_hidden_states.shape[1]
        text_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())


# ---- one processor per layer ------------------------------------------------------------------------------

def layer_index(processor_name: str, num_double_blocks: int) -> int:
    """Index over all attention layers in module order: ``single_transformer_blocks.3...`` -> N + 3."""
    match = PROCESSOR_NAME.fullmatch(processor_name)
    if match is None:
        raise ValueError(f"unexpected attention processor {processor_name!r} in a Flux transformer")
    index = int(match["index"])
    return num_double_blocks + index if match["single"] else index


def layer_names(model) -> dict[int, str]:
    """Layer index -> processor name, for every attention layer of ``model``."""
    names = {layer_index(name, len(model.transformer_blocks)): name for name in model.attn_processors}
    expected = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    if sorted(names) != list(range(expected)):
        raise ValueError(f"attention layers {sorted(names)} do not cover 0..{expected - 1}")
    return names


def method_processors(model, attention_by_layer: Sequence[AttentionFn] | None = None,
                      timer: AttentionTimer | None = None, contiguous_qkv: bool = False,
                      key_orders: Sequence[KeyOrder | None] | None = None) -> dict[str, MethodAttnProcessor]:
    """``{processor name: MethodAttnProcessor}`` for every layer; SDPA where ``attention_by_layer`` is None;
    ``key_orders``: each layer's key order (or None), where the method offers them."""
    names = layer_names(model)
    for given, what in ((attention_by_layer, "attention functions"), (key_orders, "key orders")):
        if given is not None and len(given) != len(names):
            raise ValueError(f"{len(given)} {what} for {len(names)} attention layers")
    return {name: MethodAttnProcessor(layer, sdpa_attention if attention_by_layer is None
                                      else attention_by_layer[layer], timer, contiguous_qkv,
                                      None if key_orders is None else key_orders[layer])
            for layer, name in names.items()}


def install(model, processors: Mapping[str, object]) -> None:
    """Set one processor per layer (``set_attn_processor`` consumes its dict, so it gets a copy)."""
    model.set_attn_processor(dict(processors))


class Switch:
    """Which contender the installed `SwitchProcessor` s run: set it before a forward (an attribute, no
    reinstall, so that interleaved steps of several contenders time nothing but their forwards)."""

    def __init__(self):
        self.current: str | None = None


class SwitchProcessor:
    """One layer's processors of several contenders; each call runs the one its `Switch` names."""

    def __init__(self, switch: Switch, by_contender: Mapping[str, object]):
        self.switch, self.by_contender = switch, dict(by_contender)

    # the signature of FluxAttnProcessor's: diffusers passes a processor only the keywords its __call__ names
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        return self.by_contender[self.switch.current](attn, hidden_states, encoder_hidden_states, attention_mask,
                                                      image_rotary_emb)


def switch_processors(by_contender: Mapping[str, Mapping[str, object]], switch: Switch) -> dict[str, SwitchProcessor]:
    """``{processor name: SwitchProcessor}`` over each contender's ``{processor name: processor}``."""
    names = {name for processors in by_contender.values() for name in processors}
    return {name: SwitchProcessor(switch, {contender: layers[name] for contender, layers in by_contender.items()})
            for name in sorted(names)}


def diffusers_processors(model) -> dict[str, object]:
    """diffusers' own FluxAttnProcessor on every layer: the untouched reference model."""
    return {name: FluxAttnProcessor() for name in model.attn_processors}


def prepare_layers(method: Method, problem: Problem, device: torch.device | str,
                   num_layers: int) -> list[PreparedAttention]:
    """``method`` prepared for every attention layer (its mask may slide with the layer index).

    All layers must share one image order: the tokens are permuted once per forward, not per layer.
    """
    prepared = [method.prepare(replace(problem, layer=layer), device) for layer in range(num_layers)]
    first = prepared[0].image_order
    for layer, prep in enumerate(prepared[1:], start=1):
        if not _same_order(first, prep.image_order):
            raise ValueError(f"{method.name}: layer {layer} orders the image tokens differently from layer 0; "
                             "the end-to-end path permutes once per forward")
    return prepared


def _same_order(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a.cpu(), b.cpu())


# ---- the once-per-forward permutation ---------------------------------------------------------------------

@dataclass(frozen=True)
class TokenOrder:
    """Image tokens in a method's order: ``order[p]`` is the row-major index of the token at position p."""

    order: torch.Tensor  # int64 [H*W]
    inverse: torch.Tensor  # int64 [H*W]: inverse[order[p]] = p

    @classmethod
    def from_image_order(cls, image_order: torch.Tensor | None, device: torch.device | str) -> TokenOrder | None:
        """None for row-major methods (nothing to permute)."""
        if image_order is None:
            return None
        order = image_order.to(device=device, dtype=torch.int64)
        if not torch.equal(torch.sort(order).values, torch.arange(order.numel(), device=order.device)):
            raise ValueError("image_order is not a permutation of the image tokens")
        return cls(order=order, inverse=torch.argsort(order))

    def permute(self, inputs: FluxInputs) -> FluxInputs:
        """Latents and their RoPE ids into the method's order; text is untouched (and stays first)."""
        return replace(inputs, hidden_states=inputs.hidden_states[:, self.order], img_ids=inputs.img_ids[self.order])

    def restore(self, output: torch.Tensor) -> torch.Tensor:
        """``[B, H*W, C]`` model output back to row-major order."""
        return output[:, self.inverse]


def transformer_forward(model, inputs: FluxInputs, order: TokenOrder | None = None) -> torch.Tensor:
    """One transformer forward on row-major inputs, returning the row-major output ``[B, H*W, C]``."""
    if order is not None:
        inputs = order.permute(inputs)
    output = model(**inputs.model_kwargs(), return_dict=False)[0]
    return output if order is None else order.restore(output)
