"""The contenders of an end-to-end run: diffusers' own model (the reference) and each registry method
installed as the model's attention processors, with the row fields that name them.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baselines.base import Method
from baselines.problem import Problem
from baselines.registry import spec_of
from harness.apps.e2e.flux_model import diffusers_available

# diffusers is optional: without it every case is reported unavailable (processors imports it).
processors = importlib.import_module("harness.apps.e2e.processors") if diffusers_available() else None

REFERENCE = "diffusers_sdpa"


@dataclass
class Contender:
    """One attention method made ready for the model at one resolution."""

    name: str
    backend: str | None
    make_processors: Callable[[object | None], dict]  # AttentionTimer | None -> {processor name: processor}
    order: object | None = None  # processors.TokenOrder
    density: dict = field(default_factory=lambda: {"token": 1.0, "block": 1.0})
    setup_ms: dict = field(default_factory=dict)
    ordered_layers: int = 0  # layers whose K and V the processors write in the method's key order


def identity(method: Method | None) -> dict:
    """The row fields naming the contender: the diffusers reference for None, else a registry method."""
    if method is None:  # not a registry family
        return {"method": REFERENCE, "label": "diffusers FluxAttnProcessor (SDPA)", "category": "dense",
                "params": {}, "dense_reference": True}
    return {"method": method.name, "label": method.label, "family": spec_of(method)["method"],
            "category": method.family, "params": dict(method.params), "dense_reference": method.dense_reference}


def reference_contender(model) -> Contender:
    # Timed as diffusers ships it; its instrumented pass uses our processor's SDPA path (the same math,
    # checked against FluxAttnProcessor by the tests) because FluxAttnProcessor has no timing hook.
    return Contender(
        name=REFERENCE, backend="sdpa-default",
        make_processors=lambda timer: processors.diffusers_processors(model) if timer is None
        else processors.method_processors(model, None, timer))


def qkv_layout(contender: Contender, contiguous_qkv: bool) -> str:
    if contender.name == REFERENCE or not contiguous_qkv:
        layout = "[B, H, L, D] views of the [B, L, H, D] projections (as diffusers passes SDPA)"
    else:
        layout = "contiguous [B, H, L, D] copies, timed with the attention"
    if contender.ordered_layers:
        layout += (f"; K and V of {contender.ordered_layers} layers written in the method's key order by RoPE's "
                   "cast, the text-image concatenation and V's projection (one GEMM per segment)")
    return layout


def method_contender(method: Method, model, problem: Problem, device: torch.device,
                      contiguous_qkv: bool) -> Contender:
    start = time.perf_counter()
    prepared = processors.prepare_layers(method, problem, device, len(processors.layer_names(model)))
    prepare_ms = (time.perf_counter() - start) * 1e3
    runs = [p.run for p in prepared]
    key_orders = [p.key_order for p in prepared]
    setup_ms = {"prepare": prepare_ms}
    for p in prepared:
        for key, ms in p.setup_ms.items():
            setup_ms[key] = setup_ms.get(key, 0.0) + ms
    return Contender(
        name=method.name, backend=prepared[0].backend,
        make_processors=lambda timer: processors.method_processors(model, runs, timer, contiguous_qkv, key_orders),
        order=processors.TokenOrder.from_image_order(prepared[0].image_order, device),
        density={"token": statistics.fmean(p.token_density for p in prepared),
                 "block": statistics.fmean(p.block_density for p in prepared)},
        setup_ms=setup_ms, ordered_layers=sum(order is not None for order in key_orders))
