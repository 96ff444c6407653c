"""The method registry: names that encode parameters, specs, readable errors, cached availability."""

from __future__ import annotations

import json

import pytest
import torch

from baselines import registry
from baselines.base import Availability
from baselines.problem import Problem

EXPECTED_FAMILIES = {"sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex_dense", "flash_attn",
                     "hilberta", "hilberta_flex", "hilberta_raster", "sta", "sta_flex", "na"}


def test_every_family_is_registered():
    assert EXPECTED_FAMILIES <= set(registry.family_names())


@pytest.mark.parametrize("spec, name", [
    ("hilberta", "hilberta_t16"),
    ({"method": "hilberta", "tiles": 4, "curve": "closed"}, "hilberta_t4_closed"),
    ({"method": "hilberta", "centre": 0.0, "cycle": 2}, "hilberta_t16_f0_cyc2"),
    ({"method": "hilberta_raster", "tiles": 4}, "hilberta_raster_t4"),
    ({"method": "hilberta_flex"}, "hilberta_flex_t16"),
    ("sta", "sta_tile8x8_win3x3"),
    ({"method": "sta", "tile": [16, 8], "window": 5}, "sta_tile16x8_win5x5"),
    ({"method": "sta_flex", "window": [2, 3]}, "sta_flex_tile8x8_win2x3"),
    ("na", "na_k17"),
    ({"method": "na", "kernel": 9, "impl": "flex"}, "na_k9_flex"),
    ("sdpa_cudnn", "sdpa_cudnn"),
    ({"method": "flash_attn", "version": "3"}, "flash_attn3"),
])
def test_names_encode_parameters(spec, name):
    assert registry.resolve(spec).name == name


def test_json_round_trip_of_specs_gives_the_same_method():
    """Results rows store params as JSON (tuples become lists): resolving them must give the method back."""
    for method in registry.all_methods():
        spec = json.loads(json.dumps(registry.spec_of(method)))
        assert registry.resolve(spec) is method
        assert registry.resolve(method.name) is method  # names of default methods resolve too


def test_default_names_are_unique_and_dense_references_are_flagged():
    methods = registry.all_methods()
    assert len({m.name for m in methods}) == len(methods)
    references = {m.name for m in methods if m.dense_reference}
    assert references == {"sdpa_cudnn", "sdpa_flash", "flash_attn", "flex_dense", "fa4_dense"}
    assert {m.family for m in methods} <= set(registry.CATEGORIES)


@pytest.mark.parametrize("spec, needles", [
    ("no_such_method", ["no_such_method", "hilberta", "sta", "sdpa_cudnn"]),
    ({"method": "nope"}, ["nope", "valid families", "na"]),
    ({"method": "sta", "tiles": 4}, ["'tiles'", "tile", "window"]),
    ({"method": "hilberta", "tiles": 0}, ["'tiles'", "positive"]),
    ({"method": "hilberta", "curve": "zorder"}, ["zorder", "hilbert", "closed"]),
    ({"method": "hilberta", "centre": 1.5}, ["'centre'", "[0, 1)"]),
    ({"method": "na", "kernel": 4}, ["'kernel'", "odd"]),
    ({"method": "sta", "window": [1, 2, 3]}, ["'window'", "pair"]),
    ({"method": "na", "impl": "cuda"}, ["'impl'", "natten", "flex"]),
    ({"tiles": 4}, ["'method'"]),
])
def test_bad_specs_raise_value_errors_naming_the_problem_and_the_choices(spec, needles):
    with pytest.raises(ValueError) as info:
        registry.resolve(spec)
    for needle in needles:
        assert needle in str(info.value)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Families registered by a test disappear with it."""
    for table in ("_FAMILIES", "_SPECS", "_METHODS", "_AVAILABILITY"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


def test_availability_is_probed_once_per_method_and_device(scratch_registry):
    calls = []

    def probe(device, **params):
        calls.append((str(device), dict(params)))
        return Availability(False, "fake backend missing")

    decorate = registry.register_family("fake_family", category="dense", label=lambda p: "Fake",
                                        params={"size": registry.Param(1, "positive int", registry.positive_int)},
                                        method_name=lambda p: f"fake_s{p['size']}", probe=probe)
    decorate(lambda problem, device, size: None)
    method = registry.resolve({"method": "fake_family", "size": 2})
    for _ in range(3):
        avail = method.availability("cpu")
    assert not avail and avail.reason == "fake backend missing"
    assert calls == [("cpu", {"size": 2})]
    registry.resolve({"method": "fake_family", "size": 3}).availability("cpu")
    assert len(calls) == 2  # another parametrization is another method
    with pytest.raises(RuntimeError, match="fake backend missing"):
        method.prepare(Problem(8, 8, text_tokens=0, heads=1, head_dim=16), "cpu")


def test_a_crashing_probe_becomes_an_unavailable_reason(scratch_registry):
    def probe(device):
        raise OSError("driver exploded")

    registry.register_family("crashy", category="dense", label=lambda p: "Crashy", probe=probe)(lambda p, d: None)
    avail = registry.resolve("crashy").availability("cpu")
    assert not avail and "driver exploded" in avail.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA reasons")
@pytest.mark.parametrize("name", ["sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flash_attn"])
def test_gpu_only_methods_say_why_they_cannot_run_on_cpu(name):
    avail = registry.resolve(name).availability("cpu")
    assert not avail and "CUDA" in avail.reason


def test_listing_rows_have_the_contract_keys():
    rows = registry.listing("cpu")
    assert {row["name"] for row in rows} == {m.name for m in registry.all_methods()}
    for row in rows:
        assert set(row) == {"name", "label", "family", "dense_reference", "available", "reason"}
        assert isinstance(row["available"], bool) and isinstance(row["reason"], str)
    by_name = {row["name"]: row for row in rows}
    assert by_name["sdpa_math"]["available"]  # the CPU smoke-run dense method


def test_module_entry_point_prints_every_method(capsys):
    from baselines.__main__ import main

    main(["--device", "cpu"])
    out = capsys.readouterr().out
    for method in registry.all_methods():
        assert method.name in out
