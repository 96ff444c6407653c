"""Results files (atomic, strict JSON, schema check on write and read, the schema-1 upgrade), the
pytest-benchmark export, and derived metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from baselines.base import PreparedAttention
from baselines.problem import Problem
from harness import PROJECT_ROOT
from harness.cli import main as cli_main
from harness.core import results
from harness.core.results import ResultsError, ResultsFile, export_pytest_benchmark, load_results
from harness.core.schema import SCHEMA_VERSION, Row, SchemaError, validate_row
from harness.measure import derived

COMMITTED = sorted([*PROJECT_ROOT.glob("docs/samples/**/results.json*"), *PROJECT_ROOT.glob("tests/fixtures/*.json"),
                    *PROJECT_ROOT.glob("suites/references/*/*.json")])


def row(case: str, method: str, median_ms: float | None, status: str = "ok", dense: bool = False,
        token_density: float = 1.0, layer: int = 0, height: int = 128, samples=None) -> dict:
    problem = Problem(height=height, width=height, layer=layer).to_dict()
    flops = Problem(height=height, width=height).dense_flops
    return {"kind": "kernel", "case": case, "method": method, "dense_reference": dense, "status": status,
            "problem": problem, "median_ms": median_ms, "samples_ms": samples or ([median_ms] if median_ms else []),
            "density": {"token": token_density, "block": token_density},
            "flops": {"dense": flops, "effective": flops * token_density, "computed": flops * token_density}}


# ---- ResultsFile ------------------------------------------------------------------------------------------

def new_file(tmp_path) -> ResultsFile:
    return ResultsFile(tmp_path / "run" / "results.json", run_id="r1", suite="smoke", policy={"rounds": 1})


def test_file_is_valid_from_the_start_and_after_every_case(tmp_path):
    file = new_file(tmp_path)
    assert load_results(file.directory)["cases"] == []
    for i in range(3):
        file.add_case(row(f"c{i}", "m", 1.0 + i))
        assert [r["case"] for r in load_results(file.path)["cases"]] == [f"c{j}" for j in range(i + 1)]


def test_interrupted_write_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    file = new_file(tmp_path)
    file.add_case(row("c0", "m", 1.0))

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        file.add_case(row("c1", "m", 2.0))
    monkeypatch.undo()
    assert [r["case"] for r in load_results(file.directory)["cases"]] == ["c0"]
    assert sorted(p.name for p in file.directory.iterdir()) == ["results.json"]


def test_non_finite_numbers_become_null_and_the_file_is_strict_json(tmp_path):
    file = new_file(tmp_path)
    bad = row("c0", "m", 1.0)
    bad["correctness"] = {"rel_err": math.inf, "max_abs_err": math.nan, "passed": False}
    file.add_case({**bad, "status": "incorrect"})

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(file.path.read_text(), parse_constant=refuse)
    assert data["cases"][0]["correctness"] == {"rel_err": None, "max_abs_err": None, "passed": False}


@pytest.mark.parametrize("bad_row, message", [
    ({"kind": "kernel", "case": "c0", "status": "ok"}, "already"),
    ({"kind": "kernel", "case": "c9", "status": "great"}, "case 'c9': field 'status' is 'great', not one of"),
    ({"kind": "bench", "case": "c9"}, "case 'c9': field 'kind'"),
    ({"case": "c9"}, "case 'c9': required field 'kind' is missing"),
    ({"kind": "kernel", "case": "c9", "median_ms": "fast"}, "case 'c9': field 'median_ms' is 'fast', expected"),
    ({"kind": "kernel", "case": "c9", "samples_ms": [1.0, "x"]}, "field 'samples_ms'"),
    ({"kind": "kernel", "case": "c9", "dense_reference": 1}, "field 'dense_reference'"),
    ({"kind": "kernel", "case": "c9", "n_samples": True}, "field 'n_samples'"),
    ({"kind": "kernel", "case": "c9", "colour": "red"}, "case 'c9': unknown field 'colour'"),
])
def test_add_case_refuses_duplicates_and_rows_off_the_schema(tmp_path, bad_row, message):
    file = new_file(tmp_path)
    file.add_case(row("c0", "m", 1.0))
    with pytest.raises(ValueError, match=message):
        file.add_case(bad_row)


def test_update_cases_replaces_by_id_and_env_goes_to_both_files(tmp_path):
    file = new_file(tmp_path)
    file.add_case(row("c0", "m", 1.0))
    file.add_case(row("c1", "m", 2.0))
    file.update_cases([{**row("c1", "m", 3.0), "derived": {"x": 1}}])
    file.write_env({"gpu_name": "test"})
    data = load_results(file.directory)
    assert [r["median_ms"] for r in data["cases"]] == [1.0, 3.0]
    assert data["env"] == json.loads((file.directory / "env.json").read_text()) == {"gpu_name": "test"}


def test_set_refuses_run_fields_off_the_schema(tmp_path):
    file = new_file(tmp_path)
    file.set(complete=True, finished="2026-11-28T00:00:00+00:00")
    with pytest.raises(SchemaError, match="run field 'complete'"):
        file.set(complete="yes")
    with pytest.raises(SchemaError, match="unknown run field 'colour'"):
        file.set(colour="red")
    assert load_results(file.path)["complete"] is True


def test_rows_built_through_the_schema_keep_the_always_written_keys_and_drop_empty_ones():
    built = Row(kind="kernel", case="c", method="m", median_ms=1.5).to_dict()
    assert built == {"kind": "kernel", "case": "c", "status": "ok", "reason": None, "method": "m", "median_ms": 1.5}
    assert validate_row(built) is built


V2 = {"schema": SCHEMA_VERSION, "run_id": "r"}


@pytest.mark.parametrize("content, message", [
    ({"schema": 3, "cases": []}, "schema 3; this harness reads schemas 1, 2"),
    ({"cases": []}, "schema None"),
    ({"schema": 2}, "no 'cases'"),
    ("{not json", "not valid JSON"),
    ({**V2, "cases": [{"kind": "kernel", "case": "c", "median_ms": "fast"}]}, "case 'c': field 'median_ms'"),
    ({**V2, "cases": [{"kind": "kernel", "case": "c", "colour": 1}]}, "unknown field 'colour'"),
    ({**V2, "cases": [{"kind": "kernel", "case": "c"}, {"kind": "e2e", "case": "c"}]}, "case 'c' appears twice"),
    ({**V2, "cases": [], "finished": 3}, "run field 'finished' is 3"),
    ({"schema": 2, "cases": []}, "run field 'run_id' is missing"),
])
def test_load_results_explains_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ResultsError, match=message):
        load_results(tmp_path)


def test_the_cli_refuses_an_invalid_file_naming_the_field(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({**V2, "cases": [{"kind": "kernel", "case": "c",
                                                                         "median_ms": [1]}]}))
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "field 'median_ms'" in capsys.readouterr().err


SCHEMA_1 = {"schema": 1, "run_id": "old", "cases": [
    {"kind": "kernel", "case": "k", "family": "hilberta", "spec": {"method": "hilberta_flex", "tiles": 4}},
    {"kind": "e2e", "case": "e", "family": "dense"},
    {"kind": "tune", "case": "t", "family": "sta", "method": "sta_tile8x8_win3x3"},
]}


def test_a_schema_1_file_is_upgraded_family_meaning_one_thing(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(SCHEMA_1))
    data = load_results(tmp_path)
    kernel, e2e, tune = data["cases"]
    assert data["schema"] == SCHEMA_VERSION and data["upgrade"] == {"from": 1, "problems": []}
    assert (kernel["family"], kernel["category"]) == ("hilberta_flex", "hilberta")
    assert "family" not in e2e and e2e["category"] == "dense"
    assert (tune["kernel"], tune["family"]) == ("sta", "sta")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_committed_results_load_and_only_the_nasty_fixture_has_problems(path: Path):
    data = load_results(path)
    assert data["schema"] == SCHEMA_VERSION
    problems = data.get("upgrade", {}).get("problems", [])
    if path.name == "results_nasty.json":  # a hostile file for the report: kept, its problems listed
        assert any("field 'kind' is 'mystery'" in p for p in problems)
    else:
        assert problems == []


def test_a_gzipped_results_file_loads_like_the_plain_one(tmp_path):
    """The committed samples are stored gzipped: every reader goes through load_results, by file or folder."""
    import gzip

    plain = ResultsFile(tmp_path / "plain" / "results.json", run_id="r", suite="s")
    plain.add_case(Row(kind="kernel", case="a/m/layer0", status="ok").to_dict())
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "results.json.gz").write_bytes(gzip.compress((tmp_path / "plain" / "results.json").read_bytes()))
    expected = load_results(tmp_path / "plain")
    assert load_results(packed) == load_results(packed / "results.json.gz") == expected
    (packed / "results.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ResultsError, match=r"is not valid JSON \(gzip\)"):
        load_results(packed)


def test_load_results_of_a_missing_directory(tmp_path):
    with pytest.raises(ResultsError, match="no results file"):
        load_results(tmp_path / "nothing")


# ---- pytest-benchmark export --------------------------------------------------------------------------------

def exported(tmp_path) -> tuple[dict, dict]:
    data = {"schema": SCHEMA_VERSION, "suite": "smoke", "created": "2026-11-27T10:00:00+00:00", "policy": {},
            "env": {"gpu_name": "test", "git": {"commit": "abc123", "dirty": True}},
            "cases": [row("128x128/a/layer0", "a", 2.0, samples=[1.0, 2.0, 4.0, 3.0]),
                      row("128x128/b/layer0", "b", None, status="failed")]}
    path = export_pytest_benchmark(data, tmp_path / "pytest-benchmark.json")
    return data, json.loads(path.read_text())


def test_export_has_pytest_benchmark_keys_in_seconds(tmp_path):
    _, out = exported(tmp_path)
    assert set(out) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert out["commit_info"]["id"] == "abc123" and out["commit_info"]["dirty"] is True
    (bench,) = out["benchmarks"]  # untimed rows are left out
    assert bench["name"] == "128x128/a/layer0" and bench["group"] == "2048x2048"  # 128x128 tokens
    assert bench["params"]["method"] == "a"
    stats = bench["stats"]
    assert set(stats) >= {"min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "iqr_outliers",
                          "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "ops", "total", "data", "iterations"}
    assert stats["data"] == [0.001, 0.002, 0.004, 0.003]
    assert stats["min"] == 0.001 and stats["max"] == 0.004 and stats["median"] == pytest.approx(0.0025)
    assert stats["rounds"] == 4 and stats["ops"] == pytest.approx(4 / 0.010)


def test_export_loads_with_pytest_benchmarks_own_loader(tmp_path):
    storage_module = pytest.importorskip("pytest_benchmark.storage.file")
    from pytest_benchmark.logger import Logger

    exported(tmp_path)
    storage = storage_module.FileStorage(tmp_path, logger=Logger(Logger.QUIET))
    (bench,) = list(storage.load_benchmarks(str(tmp_path / "pytest-benchmark.json")))
    assert bench["name"] == "128x128/a/layer0"
    assert bench["median"] == pytest.approx(0.0025) and bench["ops"] == pytest.approx(400.0)


# ---- derived metrics ------------------------------------------------------------------------------------------

def test_speedups_against_every_dense_reference_and_ideal():
    rows = [row("d1", "sdpa_cudnn", 4.0, dense=True), row("d2", "sdpa_flash", 8.0, dense=True),
            row("s0", "hilberta_t16", 2.0, token_density=0.25),
            row("s1", "hilberta_t16", 2.5, token_density=0.25, layer=1)]
    derived.add_derived(rows)
    d = rows[2]["derived"]
    assert d["speedup"] == {"sdpa_cudnn": 2.0, "sdpa_flash": 4.0}
    assert d["fastest_dense"] == "sdpa_cudnn" and d["ideal_ms"] == 1.0 and d["fraction_of_ideal"] == 0.5
    assert rows[3]["derived"]["speedup"]["sdpa_cudnn"] == pytest.approx(1.6)  # layer 1 vs the dense layer-0 rows
    assert rows[0]["derived"]["speedup"] == {"sdpa_cudnn": 1.0, "sdpa_flash": 2.0}


def test_tflops_are_dense_equivalent_and_effective():
    rows = derived.add_derived([row("s0", "m", 2.0, token_density=0.25)])
    flops = rows[0]["flops"]["dense"]
    assert rows[0]["tflops"]["dense_equivalent"] == pytest.approx(flops / 2e-3 / 1e12)
    assert rows[0]["tflops"]["effective"] == pytest.approx(0.25 * flops / 2e-3 / 1e12)
    assert rows[0]["derived"] is None  # no dense reference in the run


def test_incorrect_rows_never_win_nor_serve_as_reference():
    rows = [row("d1", "sdpa_cudnn", 4.0, dense=True), row("d2", "broken_dense", 0.1, dense=True, status="incorrect"),
            row("s0", "fast_but_wrong", 0.5, token_density=0.25, status="incorrect"),
            row("s1", "hilberta_t16", 2.0, token_density=0.25)]
    derived.add_derived(rows)
    assert rows[2]["derived"] is None and rows[2]["tflops"] is None
    assert rows[1]["derived"] is None
    assert rows[3]["derived"]["speedup"] == {"sdpa_cudnn": 2.0}
    assert rows[3]["derived"]["fastest_dense"] == "sdpa_cudnn"


@pytest.mark.parametrize("dense_card, expected", [(0, {"sdpa_cudnn": 2.0}), (1, None)])
def test_speedups_only_against_dense_rows_timed_on_the_same_card(dense_card, expected):
    """A --gpus run: a figure counts only against a baseline timed on its own card."""
    rows = [{**row("d", "sdpa_cudnn", 4.0, dense=True), "device_index": dense_card},
            {**row("s", "hilberta_t16", 2.0, token_density=0.25), "device_index": 0}]
    derived.add_derived(rows)
    assert (rows[1]["derived"] or {}).get("speedup") == expected


def test_problems_do_not_mix_and_other_kinds_are_untouched():
    rows = [row("a/d", "sdpa_cudnn", 4.0, dense=True), row("b/d", "sdpa_cudnn", 40.0, dense=True, height=256),
            row("b/s", "hilberta_t16", 10.0, token_density=0.2, height=256),
            {"kind": "e2e", "case": "e2e/x", "status": "ok", "median_ms": 1.0, "derived": {"kept": True}}]
    derived.add_derived(rows)
    assert rows[2]["derived"]["speedup"] == {"sdpa_cudnn": 4.0}
    assert rows[3]["derived"] == {"kept": True}


def test_static_metrics_of_a_prepared_method():
    problem = Problem(height=4, width=4, text_tokens=4, heads=2, head_dim=8, dtype="float32")
    length = problem.seq_len
    prepared = PreparedAttention(method="m", problem=problem, backend="test", run=lambda q, k, v: q,
                                 image_order=None, mask_rows=None, allowed_pairs=length * length // 2,
                                 computed_pairs=length * length * 3 // 4)
    metrics = derived.static_metrics(prepared)
    assert metrics["density"] == {"token": 0.5, "block": 0.75}
    assert metrics["flops"]["effective"] == pytest.approx(0.5 * problem.dense_flops)
    assert metrics["bytes"]["compulsory"] == 4 * 2 * length * 8 * torch.tensor([], dtype=torch.float32).element_size()
