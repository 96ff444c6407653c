"""Suites: every shipped suite loads; mistakes are reported with the key or value and its line."""

from __future__ import annotations

import textwrap
from collections import defaultdict

import pytest

from baselines import registry
from harness.apps.e2e import E2ESettings
from harness.core.suite import (
    LAYERED_CATEGORIES,
    GateThresholds,
    MetricScope,
    SuiteError,
    available_suites,
    load_suite,
    parse_resolution,
)

BASE = """\
description = "test suite"
resolutions = ["128x128"]
text_tokens = 16
heads = 2
head_dim = 32
dtype = "float32"
"""
METHODS = 'methods = ["sdpa_math", {method = "hilberta", tiles = 4}]\n'
SECTIONS = {"e2e": E2ESettings.from_section}  # what `python -m harness run` gives load_suite


def write_suite(tmp_path, text: str):
    path = tmp_path / "case.toml"
    path.write_text(textwrap.dedent(text))
    return path


def marked_line(text: str) -> int:
    """1-based line of the line marked ``# HERE``."""
    lines = textwrap.dedent(text).splitlines()
    return next(i + 1 for i, line in enumerate(lines) if "# HERE" in line)


# ---- shipped suites --------------------------------------------------------------------------------------

SHIPPED = ["smoke", "bench-1024", "bench-2048", "bench-4096", "bench-ci", "density-sweep", "e2e-flux"]
BENCH = ["bench-1024", "bench-2048", "bench-4096"]  # the comparison suites, one per size


def test_every_required_suite_is_shipped():
    assert set(SHIPPED) <= set(available_suites())


@pytest.mark.parametrize("name", available_suites())
def test_shipped_suite_loads_with_unique_cases(name):
    suite = load_suite(name, sections=SECTIONS)
    cases = suite.cases()
    ids = [case.case_id for case in cases]
    assert len(ids) == len(set(ids))
    assert cases or suite.e2e is not None
    for case in cases:  # methods that ignore the layer run once, at layer 0
        if case.method.family not in LAYERED_CATEGORIES:
            assert case.problem.layer == 0, case.case_id


@pytest.mark.parametrize("name", [*BENCH, "bench-ci", "density-sweep"])
def test_bench_suites_time_against_a_dense_reference(name):
    suite = load_suite(name)
    assert any(entry.method.dense_reference for entry in suite.methods)
    assert "timing" in suite.metrics


def test_bench_2048_runs_hilberta_at_every_phase_and_dense_once():
    cases = load_suite("bench-2048").cases()
    layers = {case.problem.layer for case in cases if case.method.name == "hilberta_t16"}
    assert layers == {0, 1, 2, 3}
    assert [case.problem.layer for case in cases if case.method.name == "sdpa_cudnn"] == [0]
    assert {case.problem.resolution for case in cases} == {"2048x2048"}


def _phases_per_method(suite, resolution: str) -> dict[str, set[int]]:
    phases = defaultdict(set)
    for case in suite.cases():
        if case.problem.resolution == resolution:
            phases[case.method_name].add(case.problem.layer)
    return phases


@pytest.mark.parametrize("name", BENCH)
def test_bench_suites_run_fa4_flex_and_our_kernel_side_by_side(name):
    """Per resolution: FA4 and Flex dense, HilbertA's mask through Flex, and HilbertA T=4 and T=16 at every
    sliding phase through our kernel and through FA4 block sparsity."""
    suite = load_suite(name)
    for problem in suite.problems():
        phases = _phases_per_method(suite, problem.resolution)
        assert {"fa4_dense", "flex_dense", "hilberta_flex_t16"} <= set(phases)
        for method in ("hilberta_t4", "hilberta_t16", "hilberta_fa4_t4", "hilberta_fa4_t16"):
            assert phases[method] == {0, 1, 2, 3}, (problem.resolution, method)


@pytest.mark.parametrize("name", BENCH)
def test_bench_suites_time_sta_and_na_at_matched_density_with_their_fa4_twins(name):
    suite = load_suite(name)
    assert suite.matched_density == (16,)
    for problem in suite.problems():
        phases = _phases_per_method(suite, problem.resolution)
        specs = registry.matched_density(problem, 16)
        assert {spec["method"] for spec in specs} == {"sta", "sta_fa4", "na", "na_fa4"}, problem.resolution
        for spec in specs:
            assert phases[registry.resolve(spec).name] == {0}, spec


def test_bench_2048_profiles_fa4_traffic_next_to_ours():
    suite = load_suite("bench-2048")
    profiled = {case.method_name for case in suite.cases() if suite.traffic.covers(case)}
    assert {"fa4_dense", "hilberta_fa4_t16", "hilberta_fa4_t4", "hilberta_t16", "sdpa_cudnn"} <= profiled


def test_some_shipped_suite_has_a_non_square_resolution():
    problems = [p for name in SHIPPED for p in load_suite(name).problems()]
    assert any(p.height != p.width for p in problems)


def test_smoke_is_small_and_fp32():
    suite = load_suite("smoke")
    for problem in suite.problems():
        assert problem.dtype == "float32"
        assert problem.seq_len < 2048
    assert {(p.height, p.width) for p in suite.problems()} == {(8, 8), (12, 20)}


# ---- mistakes, with their line ----------------------------------------------------------------------------

BAD_SUITES = {
    "typo top-level key": (BASE + METHODS + 'resolutons = ["128x128"]  # HERE\n', "resolutons"),
    "typo in a table": (BASE + METHODS + "[timing]\nwarmup_ms = 1\nbudgt_ms = 5  # HERE\n", "timing.budgt_ms"),
    "unknown table": (BASE + METHODS + "[tmiing]  # HERE\nwarmup_ms = 1\n", "tmiing"),
    "unknown method in a long list": (BASE + 'methods = [\n  "sdpa_math",\n  "hilbrta",  # HERE\n]\n', "hilbrta"),
    "unknown method parameter": (
        BASE + 'methods = [\n  "sdpa_math",\n  {method = "hilberta", tilez = 4},  # HERE\n]\n', "tilez"),
    "bad value of the second entry of one family": (
        BASE + 'methods = [\n  {method = "hilberta", tiles = 4},\n  {method = "hilberta", tiles = -1},  # HERE\n]\n',
        "tiles"),
    "bad per-method layers": (
        BASE + 'methods = [\n  "sdpa_math",\n  {method = "hilberta", layers = [-1]},  # HERE\n]\n', "layers"),
    "resolution not a multiple of 16": (
        BASE.replace('resolutions = ["128x128"]', 'resolutions = [\n  "128x128",\n  "1000x1024",  # HERE\n]')
        + METHODS, "1000x1024"),
    "wrong type": (BASE.replace("heads = 2", 'heads = "2"  # HERE') + METHODS, "heads"),
    "unknown dtype": (BASE.replace('dtype = "float32"', 'dtype = "bf16"  # HERE') + METHODS, "bf16"),
    "unknown metric": (BASE + METHODS + 'metrics = ["timing", "powr"]  # HERE\n', "powr"),
    "table given a value": (BASE + METHODS + "timing = 5  # HERE\n", "timing"),
    "bad gate override": (BASE + METHODS + '[gate.overrides]\n"*/sdpa_math/*" = -3  # HERE\n', "sdpa_math"),
    "typo in a density sweep": (
        BASE + METHODS + '[density_sweep]\nmethods = [\n  {method = "hilberta", tiles = [2, 4]},\n'
        '  {method = "sta", windw = [3, 5]},  # HERE\n]\n', "windw"),
    "zero samples": (BASE + METHODS + "[timing]\nmin_samples = 0  # HERE\n", "min_samples"),
    "more samples at least than at most": (
        BASE + METHODS + "[timing]  # HERE\nmin_samples = 50\nmax_samples = 10\n", "min_samples"),
    "typo in the e2e table": ('description = "e2e"\n[e2e]\nresolutions = ["1024x1024"]\nstepz = 3  # HERE\n',
                              "stepz"),
    "tolerance of an unknown dtype": (
        BASE + METHODS + "[correctness]\ntolerances = {float8 = 0.1}  # HERE\n", "float8"),
}


@pytest.mark.parametrize("text, names", BAD_SUITES.values(), ids=BAD_SUITES.keys())
def test_mistake_is_reported_with_its_line(tmp_path, text, names):
    path = write_suite(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path, sections=SECTIONS)
    message = str(info.value)
    assert names in message
    assert info.value.line == marked_line(text), message
    assert message.startswith(f"{path}:{marked_line(text)}: ")


def test_a_table_an_application_defines_is_kept_unchecked_without_its_check(tmp_path):
    path = write_suite(tmp_path, 'description = "e2e"\n[e2e]\nstepz = 3\n')
    assert dict(load_suite(path).e2e) == {"stepz": 3}
    with pytest.raises(SuiteError, match="stepz"):
        load_suite(path, sections=SECTIONS)


def test_toml_syntax_error_gives_its_line(tmp_path):
    text = BASE + "heads = = 2  # HERE\n" + METHODS
    with pytest.raises(SuiteError, match="not valid TOML") as info:
        load_suite(write_suite(tmp_path, text))
    assert info.value.line == marked_line(text)


def test_unknown_suite_lists_the_shipped_ones():
    with pytest.raises(SuiteError, match="bench-2048"):
        load_suite("bench-2049")


@pytest.mark.parametrize("text, message", [
    ('description = "nothing"\n', "resolutions and methods"),
    (BASE, "resolutions but no methods"),
    ('description = "x"\n' + METHODS, "methods but no resolutions"),
    ('metrics = ["e2e"]\n' + BASE + METHODS, "needs an \\[e2e\\] table"),
])
def test_incomplete_suites_are_refused(tmp_path, text, message):
    with pytest.raises(SuiteError, match=message):
        load_suite(write_suite(tmp_path, text))


# ---- what a loaded suite plans ---------------------------------------------------------------------------

def test_cases_respect_layers_and_per_method_overrides(tmp_path):
    text = BASE + "layers = [0, 2]\n" + (
        'methods = ["sdpa_math", {method = "hilberta", tiles = 4}, {method = "hilberta", tiles = 2, layers = [3]}]\n')
    cases = load_suite(write_suite(tmp_path, text)).cases()
    assert [case.case_id for case in cases] == [
        "128x128/sdpa_math/layer0", "128x128/hilberta_t4/layer0", "128x128/hilberta_t4/layer2",
        "128x128/hilberta_t2/layer3"]
    assert cases[1].spec == {"method": "hilberta", "tiles": 4}


def test_density_sweep_expands_lists_and_skips_methods_already_there(tmp_path):
    text = BASE + METHODS + '[density_sweep]\nmethods = [{method = "hilberta", tiles = [2, 4, 8]}]\n'
    suite = load_suite(write_suite(tmp_path, text))
    names = [(entry.method.name, entry.group) for entry in suite.methods]
    assert names == [("sdpa_math", "main"), ("hilberta_t4", "main"), ("hilberta_t2", "density_sweep"),
                     ("hilberta_t8", "density_sweep")]
    sweep_layers = {case.problem.layer for case in suite.cases() if case.group == "density_sweep"}
    assert sweep_layers == {0}


def test_select_by_family_full_name_and_new_method(tmp_path):
    suite = load_suite(write_suite(tmp_path, BASE + METHODS))
    assert [e.method.name for e in suite.select(methods=["hilberta"]).methods] == ["hilberta_t4"]
    assert [e.method.name for e in suite.select(methods=["sdpa_math", "hilberta_t4"]).methods] == [
        "sdpa_math", "hilberta_t4"]
    added = suite.select(methods=["sta_flex"]).methods  # not in the suite: the registry's default
    assert [e.method.name for e in added] == ["sta_flex_tile8x8_win3x3"]
    with pytest.raises(ValueError, match="nosuchmethod"):
        suite.select(methods=["nosuchmethod"])


def test_select_resolutions_and_quick(tmp_path):
    suite = load_suite(write_suite(tmp_path, BASE + METHODS + "[timing]\nbudget_ms = 5000\nmin_samples = 50\n"))
    narrowed = suite.select(resolutions=["320x192"], quick=True)
    assert [(p.height, p.width) for p in narrowed.problems()] == [(12, 20)]
    assert narrowed.timing["budget_ms"] < 100 and narrowed.timing["min_samples"] < 50
    assert suite.timing["budget_ms"] == 5000  # the original is untouched
    with pytest.raises(ValueError, match="multiple of 16"):
        suite.select(resolutions=["100x100"])


def test_parse_resolution_is_width_by_height():
    problem = parse_resolution("1536x1024", text_tokens=512)
    assert (problem.height, problem.width, problem.seq_len) == (64, 96, 512 + 64 * 96)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_resolution("1536*1024")


@pytest.mark.parametrize("case_id, expected", [
    ("2048x2048/hilberta_flex_t16/layer0", 8.0),
    ("2048x2048/flex_dense/layer0", 12.0),
    ("2048x2048/sdpa_cudnn/layer0", 5.0),
])
def test_gate_override_first_matching_glob_wins(case_id, expected):
    gate = GateThresholds(5.0, {"*/hilberta_flex_*": 8.0, "*/flex_*": 12.0})
    assert gate.threshold_for(case_id) == expected


def test_metric_scope_filters_layers_and_methods(tmp_path):
    cases = load_suite(write_suite(tmp_path, BASE + "layers = [0, 1]\n" + METHODS)).cases()
    scope = MetricScope(layers=(0,), methods=("hilberta",))
    assert [c.case_id for c in cases if scope.covers(c)] == ["128x128/hilberta_t4/layer0"]
    assert all(MetricScope().covers(c) for c in cases)


def test_suite_gate_table_reaches_the_gate(tmp_path):
    text = BASE + METHODS + '[gate]\nthreshold_pct = 7\n[gate.overrides]\n"*/hilberta_*" = 10\n'
    gate = load_suite(write_suite(tmp_path, text)).gate
    assert gate.threshold_for("128x128/hilberta_t4/layer0") == 10.0
    assert gate.threshold_for("128x128/sdpa_math/layer0") == 7.0
