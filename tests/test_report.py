"""The HTML report, built on CPU from fixture results: sections, numbers, escaping, self-containment.

``results_full.json`` is a realistic H100 run (two resolutions, dense/HilbertA/STA/NA methods, four sliding
phases, power, ncu traffic, locality, end-to-end and tuning rows); ``results_nasty.json`` has failures,
NaN, empty and missing samples, absent env fields, a row without a problem and ``<script>`` in names and
reasons; ``results_reference.json`` is an older run of the full suite for compare mode.
"""

from __future__ import annotations

import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import plotly.offline
import pytest
from jinja2 import StrictUndefined

import reports
from reports.build import environment
from reports.formatting import MISSING, fmt_bytes, fmt_interval, fmt_ms, fmt_pct, fmt_ratio, fmt_text
from reports.rows import method_summary, rows_frame, timed_kernels
from reports.run import Run
from reports.sections import compare, traffic

FIXTURES = Path(__file__).parent / "fixtures"
SCRIPT = "<script>alert(1)</script>"
# Elements that would fetch something when the page loads, and CSS that would.
RESOURCE_LOAD = re.compile(r"<(script|link|img|iframe|source|embed|object|audio|video|track|input)\b[^>]*"
                           r"\s(src|href|data|srcset|poster)\s*=", re.IGNORECASE)
CSS_LOAD = re.compile(r"@import|url\(", re.IGNORECASE)


class PageOutline(HTMLParser):
    """Sections (id, empty flag, note, table and definition cells, row classes), figure divs and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.scripts: list[str] = []
        self.figure_ids: list[str] = []
        self._section: dict | None = None
        self._capture: str | None = None  # "note" | "cell" | "script"
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = {"empty": attrs.get("class") == "empty", "note": "", "cells": [], "rows": []}
            self.sections[attrs["id"]] = self._section
        elif tag == "p" and attrs.get("class") == "section-note":
            self._capture, self._text = "note", []
        elif tag in ("td", "dd"):
            self._capture, self._text = "cell", []
        elif tag == "tr" and self._section is not None:
            self._section["rows"].append(attrs.get("class") or "")
        elif tag == "script":
            self._capture, self._text = "script", []
        elif tag == "div" and "plotly-graph-div" in (attrs.get("class") or ""):
            self.figure_ids.append(attrs["id"])

    def handle_endtag(self, tag):
        text = "".join(self._text)
        if tag == "p" and self._capture == "note":
            self._section["note"] = text
        elif tag in ("td", "dd") and self._capture == "cell":
            self._section["cells"].append(text)
        elif tag == "script" and self._capture == "script":
            self.scripts.append(text)
        else:
            return
        self._capture = None

    def handle_data(self, data):
        if self._capture:
            self._text.append(data)


def outline(html: str) -> PageOutline:
    parser = PageOutline()
    parser.feed(html)
    return parser


def write_run(directory: Path, fixture: str, mutate=None) -> Path:
    """A results directory holding ``fixture`` (optionally changed by ``mutate(results)``)."""
    results = json.loads((FIXTURES / fixture).read_text())
    if mutate:
        mutate(results)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results))
    return directory


@pytest.fixture(scope="module")
def full_page(tmp_path_factory) -> str:
    run_dir = write_run(tmp_path_factory.mktemp("full"), "results_full.json")
    path = reports.build_report(run_dir, compare_dir=FIXTURES / "results_reference.json")
    assert path == run_dir / "report.html"
    return path.read_text()


@pytest.fixture(scope="module")
def nasty_page(tmp_path_factory) -> str:
    run_dir = write_run(tmp_path_factory.mktemp("nasty"), "results_nasty.json")
    return reports.build_report(run_dir).read_text()


def without_bundle(html: str) -> str:
    """The page minus the inlined plotly.js (which holds URLs and markup as strings)."""
    return html.replace(plotly.offline.get_plotlyjs(), "")


# ---------------------------------------------------------------- sections present or explained

FULL_SECTIONS = ["summary", "headline", "compare", "latency", "traffic", "power", "e2e", "correctness",
                 "locality", "tuning", "problems", "environment"]


@pytest.mark.parametrize("section", FULL_SECTIONS)
def test_full_run_fills_every_section(full_page, section):
    page = outline(full_page)
    assert list(page.sections) == FULL_SECTIONS
    assert not page.sections[section]["empty"] and not page.sections[section]["note"]
    assert page.sections[section]["cells"], f"{section} shows no table or definition rows"


@pytest.mark.parametrize("section,note", [
    ("headline", "No HilbertA row passed correctness with a timing: rel_err 0.5 > tol 0.01 " + SCRIPT),
    ("compare", "No reference run given"),
    ("traffic", "ncu not found on PATH (2 cases)"),
    ("power", "NVML is not available: <b>no driver</b> (2 cases)"),
    ("locality", "baselines.locality missing " + SCRIPT),
    ("tuning", "No tuning rows (kind 'tune') in this run."),
])
def test_nasty_run_explains_each_missing_section(nasty_page, section, note):
    found = outline(nasty_page).sections[section]
    assert found["empty"] and not found["cells"]
    assert note in found["note"]


@pytest.mark.parametrize("section", ["summary", "latency", "e2e", "correctness", "problems", "environment"])
def test_nasty_run_keeps_sections_it_has_data_for(nasty_page, section):
    found = outline(nasty_page).sections[section]
    assert not found["empty"] and found["cells"]


def test_summary_states_card_suite_commit_and_counts(full_page, nasty_page):
    full = outline(full_page).sections["summary"]["cells"]
    assert full == ["NVIDIA H100 80GB HBM3", "bench-2048", "20261127-101500-bench", "2026-11-27T10:15:00+00:00",
                    "11d1c1e5a0b7c3d2e4f6a8b9c0d1e2f3a4b5c6d7", "57 in all: 55 ok, 1 unavailable, 1 failed"]
    nasty = outline(nasty_page).sections["summary"]["cells"]
    assert nasty == [MISSING, "smoke", "nasty-<b>run</b>", "2026-11-27T11:00:00+00:00", MISSING,
                     "8 in all: 4 ok, 1 incorrect, 1 failed, 1 skipped, 1 unavailable"]


def test_problem_list_names_every_case_that_did_not_end_ok(nasty_page):
    problems = outline(nasty_page).sections["problems"]
    assert problems["rows"][1:] == ["status-incorrect", "status-failed", "status-skipped", "status-unavailable"]
    assert "prepare: RuntimeError: CUDA error: out of memory" in problems["cells"]
    assert "diffusers is not installed " + SCRIPT in problems["cells"]


# ---------------------------------------------------------------- numbers on the page


def test_headline_speedups_follow_from_the_medians(full_page):
    results = json.loads((FIXTURES / "results_full.json").read_text())
    medians = {(r["problem"]["resolution"], r["method"], r["problem"]["layer"]): r["median_ms"]
               for r in results["cases"] if r["kind"] == "kernel" and r["status"] == "ok"}
    hilberta = sum(medians["2048x2048", "hilberta_t16", layer] for layer in range(4)) / 4
    cells = outline(full_page).sections["headline"]["cells"]
    row_start = cells.index("HilbertA T=16", cells.index("2048x2048")) - 1
    row = cells[row_start:row_start + 11]
    assert row[:4] == ["2048x2048", "HilbertA T=16", "4", fmt_ms(hilberta)]
    assert row[4] == fmt_ratio(medians["2048x2048", "sdpa_cudnn", 0] / hilberta)
    assert row[5] == fmt_ratio(medians["2048x2048", "sdpa_flash", 0] / hilberta)
    assert row[7] == "4.17×"  # the paper's claim at this size
    assert row[10] == fmt_pct(medians["2048x2048", "sdpa_cudnn", 0] * 0.225 / hilberta)
    assert "does not name its dense baseline" in full_page
    assert "1024x1024: the fastest HilbertA variant, HilbertA T=16" in full_page


def test_incorrect_or_untimed_rows_are_never_ranked():
    results = json.loads((FIXTURES / "results_full.json").read_text())
    cases = results["cases"]
    cheat = next(r for r in cases if r["method"] == "sdpa_flash" and r["problem"]["resolution"] == "2048x2048")
    cheat.update(status="incorrect", median_ms=0.001)  # fast but wrong: must not become the dense reference
    frame = rows_frame(cases)
    summary = method_summary(timed_kernels(frame)).set_index(["resolution", "method"])
    assert ("2048x2048", "sdpa_flash") not in summary.index
    assert summary.loc[("2048x2048", "hilberta_t16"), "fastest_dense_label"] == "SDPA cuDNN"
    assert summary.loc[("2048x2048", "hilberta_t16"), "phases"] == 4


def test_rows_frame_turns_bad_values_into_missing():
    frame = rows_frame(json.loads((FIXTURES / "results_nasty.json").read_text())["cases"])
    nan_row = frame.set_index("case").loc["1024x1024/hilberta_t4/layer1"]
    assert math.isnan(nan_row["median_ms"]) and math.isnan(nan_row["ci_lo_ms"]) and nan_row["n_samples"] == 0
    odd = frame.set_index("case").loc["odd-kind"]
    assert math.isnan(odd["median_ms"]) and odd["method"] == "42"  # "fast" is no number
    no_problem = frame.set_index("case").loc["row-without-problem"]
    assert pd.isna(no_problem["resolution"]) and no_problem["label"] == "na_k33"
    assert math.isinf(frame.set_index("case").loc["2048x2048/sta_tile8x8_win3x3/layer0", "rel_err"])


@pytest.mark.parametrize("render,value,shown", [
    (fmt_ms, None, MISSING), (fmt_ms, float("nan"), MISSING), (fmt_ms, 5.6291, "5.629"), (fmt_ms, True, MISSING),
    (fmt_ratio, float("inf"), "∞"), (fmt_ratio, 2.3, "2.30×"), (fmt_pct, 0.349, "34.9 %"),
    (fmt_bytes, 415_236_096, "415.2 MB"), (fmt_bytes, 2.0e9, "2 GB"), (fmt_text, [], MISSING),
    (fmt_text, {"sm": 1980}, "sm: 1980"), (fmt_text, "<b>", "<b>"),
])
def test_formatters_show_missing_values_as_a_dash(render, value, shown):
    assert render(value) == shown


def test_interval_needs_both_ends():
    assert fmt_interval(1.0, None) == MISSING and fmt_interval(0.99, 1.01) == "[0.99, 1.01]"


@pytest.mark.parametrize("env,source", [
    ({"gpu_name": "NVIDIA H100 80GB HBM3", "peak_tflops": 780.0, "peak_gbps": 3000.0}, "measured on this card"),
    ({"gpu_name": "NVIDIA H100 80GB HBM3"}, "datasheet NVIDIA H100 SXM"),
    ({"gpu_name": "NVIDIA H100 PCIe"}, "datasheet NVIDIA H100 PCIe"),
    ({"gpu_name": "NVIDIA H200", "peak_tflops": float("nan"), "peak_gbps": 4000.0}, "datasheet NVIDIA H200 SXM"),
    ({"gpu_name": "NVIDIA A10"}, None),
    ({}, None),
])
def test_roofline_ceilings_say_where_they_come_from(env, source):
    ceiling = traffic.ceilings(env, env.get("gpu_name"))
    assert (ceiling and ceiling["source"].split(" (")[0]) == source


def test_full_page_labels_its_roofline_ceiling(full_page):
    assert "Ceilings: datasheet NVIDIA H100 SXM (989 TFLOP/s dense BF16, 3350 GB/s)." in full_page


# ---------------------------------------------------------------- trust: escaping, self-containment


def test_values_from_results_are_escaped(nasty_page):
    assert "<script>alert" not in nasty_page
    assert "<b>no driver" not in nasty_page and "<i>sdpa" not in nasty_page and "<b>run" not in nasty_page
    cells = [cell for section in outline(nasty_page).sections.values() for cell in section["cells"]]
    assert SCRIPT in cells  # shown as text, exactly as recorded


def test_only_plotly_scripts_run(full_page, nasty_page):
    for html in (full_page, nasty_page):
        page = outline(html)
        bundle, *figure_scripts = page.scripts
        assert bundle == plotly.offline.get_plotlyjs()
        assert len(figure_scripts) == len(page.figure_ids)
        assert all(script.strip().startswith("window.PLOTLYENV") for script in figure_scripts)


def test_plotly_js_is_inlined_exactly_once(full_page, nasty_page):
    bundle = plotly.offline.get_plotlyjs()
    for html in (full_page, nasty_page):
        assert html.count(bundle) == 1
        assert html.count(bundle[:300]) == 1


def test_page_loads_nothing_from_elsewhere(full_page, nasty_page):
    for html in (full_page, nasty_page):
        assert not RESOURCE_LOAD.search(html)
        rest = without_bundle(html)
        assert not CSS_LOAD.search(rest)
        assert "http://" not in rest and "https://" not in rest


def test_every_figure_has_a_unique_div(full_page):
    page = outline(full_page)
    assert len(page.figure_ids) == len(set(page.figure_ids)) == 11
    assert full_page.count("Plotly.newPlot(") == 11


def test_environment_is_strict_and_autoescaping():
    env = environment()
    assert env.undefined is StrictUndefined
    assert env.autoescape("report.html") and env.autoescape("anything")


# ---------------------------------------------------------------- compare mode


def load_pair(tmp_path, mutate_candidate=None) -> tuple[Run, Run]:
    candidate = Run.load(write_run(tmp_path / "cand", "results_full.json", mutate_candidate))
    return candidate, Run.load(FIXTURES / "results_reference.json")


def table_rows(section) -> dict[str, str]:
    """case id -> row CSS class of the section's first table."""
    table = next(block for block in section.blocks if block.kind == "table")
    return {row[0]: css for row, css in zip(table.rows, table.row_classes)}


def test_compare_colours_rows_by_gate_outcome(tmp_path):
    pytest.importorskip("harness.apps.gate.compare")
    candidate, reference = load_pair(tmp_path)
    rows = table_rows(compare.section(candidate, reference))
    assert rows["2048x2048/hilberta_t16/layer0"] == "outcome-regression"
    assert rows["1024x1024/sta_tile8x8_win3x3/layer0"] == "outcome-improvement"
    assert rows["2048x2048/hilberta_t64/layer0"] == "outcome-missing"
    assert rows["1024x1024/sdpa_cudnn/layer0"] == "outcome-unchanged"


def test_compare_passes_the_threshold_and_shows_the_gates_numbers(tmp_path, monkeypatch):
    calls = []

    def fake_compare(reference, candidate, threshold_pct):
        calls.append((reference["run_id"], candidate["run_id"], threshold_pct))
        return {"verdict": "fail", "exit_code": 1, "message": "FAIL: 1 of 1 cases fail", "cases": [
            {"case": "1024x1024/sdpa_cudnn/layer0", "outcome": "regression", "ratio": 1.2, "ci": [1.1, 1.3],
             "p_value": 1e-5, "ref_median_ms": 0.4, "cand_median_ms": 0.48, "reason": SCRIPT}]}

    monkeypatch.setattr(compare, "gate_compare", lambda: fake_compare)
    candidate, reference = load_pair(tmp_path)
    section = compare.section(candidate, reference)
    assert calls == [("20261120-090000-bench", "20261127-101500-bench", 5.0)]
    table = next(block for block in section.blocks if block.kind == "table")
    assert table.rows == [["1024x1024/sdpa_cudnn/layer0", "0.4", "0.48", "+20.0 %", "1.2", "[1.1, 1.3]", "1e-05",
                           "regression", SCRIPT]]
    assert table.row_classes == ["outcome-regression"]
    assert any(block.kind == "paragraph" and "FAIL: 1 of 1" in block.text for block in section.blocks)


def test_compare_without_the_gate_shows_plain_ratios(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "harness.apps.gate.compare", None)  # import harness.apps.gate.compare -> ImportError
    assert compare.gate_compare() is None

    def slower_cudnn(results):
        row = next(r for r in results["cases"] if r["case"] == "1024x1024/sdpa_cudnn/layer0")
        row["median_ms"] *= 2

    candidate, reference = load_pair(tmp_path, slower_cudnn)
    section = compare.section(candidate, reference)
    rows = table_rows(section)
    assert set(rows.values()) == {"outcome-not-judged"}
    table = next(block for block in section.blocks if block.kind == "table")
    cudnn = next(row for row in table.rows if row[0] == "1024x1024/sdpa_cudnn/layer0")
    assert cudnn[3] == "+100.0 %" and cudnn[5] == MISSING
    assert any("harness.apps.gate.compare is not available" in block.text for block in section.blocks if block.kind == "paragraph")


def test_compare_section_renders_the_gates_refusal(tmp_path):
    pytest.importorskip("harness.apps.gate.compare")
    candidate, reference = load_pair(tmp_path, lambda r: r["env"].update(gpu_name="NVIDIA H200"))
    texts = [block.text for block in compare.section(candidate, reference).blocks if block.kind == "paragraph"]
    assert any("not recorded on the same card" in text for text in texts)
    assert any(text.startswith("Refused") for text in texts)


# ---------------------------------------------------------------- building


def test_build_report_writes_where_asked(tmp_path):
    run_dir = write_run(tmp_path / "run", "results_nasty.json")
    out = reports.build_report(run_dir / "results.json", out_path=tmp_path / "pages" / "nasty.html")
    assert out == tmp_path / "pages" / "nasty.html" and out.is_file()
    assert not (run_dir / "report.html").exists()


@pytest.mark.parametrize("content", ['{"schema": 2, "cases": []}', "not json", None])
def test_build_report_rejects_what_is_not_a_results_file(tmp_path, content):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(ValueError):
        reports.build_report(tmp_path)


def test_empty_run_builds_with_notes(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"schema": 1, "cases": []}))
    page = outline(reports.build_report(run_dir).read_text())
    assert {name for name, section in page.sections.items() if not section["empty"]} == {"summary"}
    assert page.figure_ids == []
