"""The HTML report, built on CPU from fixture results: the first screen's four answers, sections, numbers,
anomaly flags, ceilings, compare mode with the gate's verdict, escaping and self-containment.

``results_full.json`` is a realistic schema-1 H100 run (two resolutions, dense/HilbertA/STA/NA methods,
four sliding phases, power, ncu traffic, locality, end-to-end and tuning rows); ``results_v2.json`` is the
same run in schema 2 with the new fields (per-case conditions, ceilings, A/A pairs, an FA4 row, an
interleaved schedule, "complete": false); ``results_nasty.json`` has failures, NaN, missing samples, absent
env fields, a row without a problem and ``<script>`` in names and reasons; ``results_reference.json`` is an
older run of the full suite for compare mode.
"""

from __future__ import annotations

import ast
import base64
import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import plotly.offline
import pytest
from jinja2 import StrictUndefined

import reports
from reports.build import environment, plotly_packed
from reports.formatting import fmt_ms, fmt_ratio
from reports.run import Run
from reports.sections import compare

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GATE_SAMPLES = ROOT / "docs" / "samples" / "h100" / "gate"
SCRIPT = "<script>alert(1)</script>"
ANSWERS = ("answer-speedup", "answer-correct", "answer-setup", "answer-failures")
# Elements that would fetch something when the page loads, and CSS that would.
RESOURCE_LOAD = re.compile(r"<(script|link|img|iframe|source|embed|object|audio|video|track|input)\b[^>]*"
                           r"\s(src|href|data|srcset|poster)\s*=", re.IGNORECASE)
CSS_LOAD = re.compile(r"@import|url\(", re.IGNORECASE)


class PageOutline(HTMLParser):
    """Sections (id, empty flag, note, cells, row classes), the text of each answer card, figure divs,
    scripts, and the headings' tooltips."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.answers: dict[str, str] = {}
        self.scripts: list[str] = []
        self.figure_ids: list[str] = []
        self.tips: dict[str, str] = {}
        self._section: dict | None = None
        self._capture: str | None = None  # "note" | "cell" | "script" | "th"
        self._text: list[str] = []
        self._answer: tuple[str, int] | None = None  # (id, div depth at its start)
        self._depth = 0
        self._th: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._depth += 1
            if (attrs.get("id") or "").startswith("answer-"):
                self._answer = (attrs["id"], self._depth)
                self.answers[attrs["id"]] = ""
        if tag == "section":
            self._section = {"empty": attrs.get("class") == "empty", "note": "", "cells": [], "rows": []}
            self.sections[attrs["id"]] = self._section
        elif tag == "p" and attrs.get("class") == "section-note":
            self._capture, self._text = "note", []
        elif tag in ("td", "dd"):
            self._capture, self._text = "cell", []
        elif tag == "th" and attrs.get("title"):
            self._capture, self._text, self._th = "th", [], attrs["title"]
        elif tag == "tr" and self._section is not None:
            self._section["rows"].append(attrs.get("class") or "")
        elif tag == "script":
            self._capture, self._text = "script", []
        elif tag == "div" and "plotly-graph-div" in (attrs.get("class") or ""):
            self.figure_ids.append(attrs["id"])

    def handle_endtag(self, tag):
        if tag == "div":
            if self._answer and self._answer[1] == self._depth:
                self._answer = None
            self._depth -= 1
        text = "".join(self._text)
        if tag == "p" and self._capture == "note":
            self._section["note"] = text
        elif tag in ("td", "dd") and self._capture == "cell":
            self._section["cells"].append(text)
        elif tag == "th" and self._capture == "th":
            self.tips[text] = self._th
        elif tag == "script" and self._capture == "script":
            self.scripts.append(text)
        else:
            return
        self._capture = None

    def handle_data(self, data):
        if self._capture:
            self._text.append(data)
        if self._answer:
            self.answers[self._answer[0]] += data + " "  # cells are separate words


def outline(html: str) -> PageOutline:
    parser = PageOutline()
    parser.feed(html)
    return parser


def squash(text: str) -> str:
    return " ".join(text.split())


def write_run(directory: Path, fixture: str, mutate=None) -> Path:
    """A results directory holding ``fixture`` (optionally changed by ``mutate(results)``)."""
    results = json.loads((FIXTURES / fixture).read_text())
    if mutate:
        mutate(results)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def page_of(tmp_path: Path, fixture: str, mutate=None, **kwargs) -> str:
    return reports.build_report(write_run(tmp_path / "run", fixture, mutate), **kwargs).read_text()


@pytest.fixture(scope="module")
def full_page(tmp_path_factory) -> str:
    run_dir = write_run(tmp_path_factory.mktemp("full"), "results_full.json")
    path = reports.build_report(run_dir, compare_dir=FIXTURES / "results_reference.json")
    assert path == run_dir / "report.html"
    return path.read_text()


@pytest.fixture(scope="module")
def v2_page(tmp_path_factory) -> str:
    return reports.build_report(write_run(tmp_path_factory.mktemp("v2"), "results_v2.json")).read_text()


@pytest.fixture(scope="module")
def nasty_page(tmp_path_factory) -> str:
    return reports.build_report(write_run(tmp_path_factory.mktemp("nasty"), "results_nasty.json")).read_text()


def figure_specs(html: str) -> list[dict]:
    """The figures' plotly specs, as the page's JSON blocks hold them."""
    return [json.loads(text) for text in re.findall(r'<script type="application/json" class="figure-data" '
                                                     r'data-div="[\w-]+">(.*?)</script>', html, re.DOTALL)]


def without_bundle(html: str) -> str:
    """The page minus the inlined plotly.js (packed: base64 of its gzip)."""
    return html.replace(plotly_packed(), "")


# ---------------------------------------------------------------- sections present or explained

FULL_SECTIONS = ["answers", "anomalies", "compare", "headline", "latency", "traffic", "power", "e2e",
                 "correctness", "locality", "tuning", "environment"]


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


@pytest.mark.parametrize("section", ["answers", "latency", "e2e", "correctness", "environment"])
def test_nasty_run_keeps_sections_it_has_data_for(nasty_page, section):
    found = outline(nasty_page).sections[section]
    assert not found["empty"] and found["cells"]


# ---------------------------------------------------------------- the first screen


@pytest.mark.parametrize("page", ["full_page", "v2_page", "nasty_page"])
def test_first_screen_has_the_four_answers(request, page):
    answers = outline(request.getfixturevalue(page)).answers
    assert set(answers) == set(ANSWERS)
    assert all(squash(text) for text in answers.values())


def test_speedup_answer_follows_from_the_medians(v2_page):
    results = json.loads((FIXTURES / "results_v2.json").read_text())
    ms = {(r["problem"]["resolution"], r["method"], r["problem"]["layer"]): r["median_ms"]
          for r in results["cases"] if r["kind"] == "kernel" and r["status"] == "ok" and "aa_of" not in r}
    hilberta = [ms["1024x1024", "hilberta_t16", layer] for layer in range(4)]
    dense = ms["1024x1024", "sdpa_cudnn", 0]
    text = squash(outline(v2_page).answers["answer-speedup"])
    mean = sum(hilberta) / 4
    expected = (f"dense attention SDPA cuDNN (fastest) 100.0 % {fmt_ms(dense)} {fmt_ratio(dense / mean)} "
                f"{dense_ci_span(results)} {min(dense / h for h in hilberta):.2f}–{max(dense / h for h in hilberta):.2f}×")
    assert expected in text
    assert "mean over the sliding phases" in text  # the basis is named
    assert "FA4 block-sparse, same mask FA4 block-sparse T=16" in text  # present in this run: listed
    assert "The paper claims 2.30× at 1024x1024; 4.17× at 2048x2048" in text


def dense_ci_span(results: dict) -> str:
    rows = {r["case"]: r for r in results["cases"]}
    dense = rows["1024x1024/sdpa_cudnn/layer0"]["ci95_ms"]
    phases = [rows[f"1024x1024/hilberta_t16/layer{i}"]["ci95_ms"] for i in range(4)]
    lo, hi = (sum(ci[0] for ci in phases) / 4, sum(ci[1] for ci in phases) / 4)
    return f"{dense[0] / hi:.2f}–{dense[1] / lo:.2f}×"


@pytest.mark.parametrize("mutate,expected", [
    (None, "32/32 cases correct, max relative error 3.91e-03 ≤ tolerance 1.00e-02"),
    (lambda r: r["cases"][0]["correctness"].update(passed=False, rel_err=0.5), "31/32 cases correct"),
])
def test_correct_answer_counts_cases_and_names_the_worst(tmp_path, mutate, expected):
    text = squash(outline(page_of(tmp_path, "results_v2.json", mutate)).answers["answer-correct"])
    assert expected in text
    assert ("Incorrect: 1024x1024/sdpa_cudnn/layer0" in text) == (mutate is not None)


def test_failures_answer_lists_every_case_and_flags_an_incomplete_run(v2_page, full_page, nasty_page):
    v2 = squash(outline(v2_page).answers["answer-failures"])
    assert "INCOMPLETE RUN" in v2 and "2048x2048/hilberta_t16/m128_n128_w8_s3 failed" in v2
    assert re.search(r"\d+ anomalies flagged from the data, \d kind\(s\)", v2)
    assert "INCOMPLETE" not in outline(full_page).answers["answer-failures"]
    nasty = squash(outline(nasty_page).answers["answer-failures"])
    for case in ("1024x1024/hilberta_t16/layer0", "2048x2048/sta_tile8x8_win3x3/layer0", "row-without-problem", "e2e"):
        assert case in nasty
    assert "prepare: RuntimeError: CUDA error: out of memory" in nasty and "anomal" not in nasty.lower()


def test_setup_answer_states_card_clocks_cap_software_shape_and_configs(v2_page, full_page):
    v2 = squash(outline(v2_page).answers["answer-setup"])
    for part in ("NVIDIA H100 80GB HBM3", "SM 1650 MHz–1900 MHz (median of each case's timed calls",
                 "clock-event reasons: SwPowerCap", "power cap 700 W", "torch 2.11.0+cu130 · triton 3.6.0 · CUDA 13.0",
                 "B=1, 24 heads, D=128, bfloat16; 1024x1024: L=4,608 (512 text tokens)", "forward only",
                 "interleaved-single-call, 5 rounds"):
        assert part in v2, part
    assert "not recorded per timed case" in squash(outline(full_page).answers["answer-setup"])  # schema 1: none


# ---------------------------------------------------------------- trust: escaping, self-containment, layers


def test_values_from_results_are_escaped(nasty_page):
    assert "<script>alert" not in nasty_page
    assert "<b>no driver" not in nasty_page and "<i>sdpa" not in nasty_page and "<b>run" not in nasty_page
    cells = [cell for section in outline(nasty_page).sections.values() for cell in section["cells"]]
    assert SCRIPT in cells  # shown as text, exactly as recorded


def test_only_plotly_and_the_page_script_run(full_page, nasty_page):
    for html in (full_page, nasty_page):
        page = outline(html)
        bundle, *data, page_script = page.scripts
        assert gzip.decompress(base64.b64decode(bundle)).decode() == plotly.offline.get_plotlyjs()
        assert '<script type="text/plain" id="plotly-bundle">' in html  # inert until the page script unpacks it
        assert len(data) == len(page.figure_ids) == html.count('<script type="application/json" class="figure-data"')
        assert all(json.loads(spec)["data"] for spec in data)  # inert JSON, one spec per figure div
        assert page_script.strip().startswith("/* Figures: drawn after the load event")
        assert "Sortable tables" in page_script and len(page_script) < 3000


def test_plotly_js_is_inlined_once_and_the_page_stays_small(full_page, v2_page):
    bundle = plotly_packed()
    assert len(bundle) < 0.5 * len(plotly.offline.get_plotlyjs())  # packed: 1.9 MB of the bundle's 4.8
    for html in (full_page, v2_page):
        assert html.count(bundle) == 1 and html.count(bundle[:300]) == 1
        assert "plotly.js v" not in html  # not inlined a second time, unpacked
        assert len(html.encode()) < 5_000_000
        assert "samples_ms" not in without_bundle(html)


def test_page_loads_nothing_from_elsewhere(full_page, nasty_page):
    for html in (full_page, nasty_page):
        assert not RESOURCE_LOAD.search(html)
        rest = without_bundle(html)
        assert not CSS_LOAD.search(rest)
        assert "http://" not in rest and "https://" not in rest


def test_every_figure_has_a_unique_div(full_page):
    page = outline(full_page)
    assert len(page.figure_ids) == len(set(page.figure_ids)) == full_page.count('class="figure-data"') >= 8


def test_environment_is_strict_and_autoescaping():
    env = environment()
    assert env.undefined is StrictUndefined
    assert env.autoescape("report.html") and env.autoescape("anything")


def test_reports_read_only_results_and_schema_from_the_harness():
    imported = set()
    for path in (ROOT / "reports").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert {name for name in imported if name.startswith("harness")} <= {"harness.core.results", "harness.core.schema"}


# ---------------------------------------------------------------- compare mode: the gate's verdict


def gate_pair(tmp_path) -> tuple[Path, dict]:
    verdict = json.loads((GATE_SAMPLES / "verdict-ci-1-vs-ci-3" / "verdict.json").read_text())
    return write_run(tmp_path / "cand", "results_full.json"), verdict


def test_compare_shows_the_verdict_as_the_gate_wrote_it(tmp_path):
    candidate, verdict = gate_pair(tmp_path)
    verdict["cases"][0].update(outcome="regression", threshold_pct=8.0, reason=SCRIPT)
    verdict.update(verdict="fail", exit_code=1, message="FAIL: 1 of 6 cases fail")
    page = reports.build_report(candidate, compare_dir=GATE_SAMPLES / "ci-1", verdict=verdict).read_text()
    section = outline(page).sections["compare"]
    assert "outcome-regression" in section["rows"] and SCRIPT in section["cells"] and "8.00" in section["cells"]
    assert "FAIL: 1 of 6 cases fail" in page and "exit code 1" in " ".join(section["cells"])
    assert "threshold" in page and "*/flex_dense/*: 8.0 %" in page  # per-case thresholds as written


def test_compare_without_a_verdict_is_not_judged(tmp_path):
    candidate = Run.load(write_run(tmp_path / "cand", "results_full.json"))
    section = compare.section(candidate, Run.load(FIXTURES / "results_reference.json"))
    table = next(block for block in section.blocks if block.kind == "table")
    assert set(table.row_classes) == {"outcome-not-judged"}
    assert any("No gate verdict was given" in block.text for block in section.blocks if block.kind == "paragraph")


def test_refused_verdict_shows_plain_ratios(tmp_path):
    candidate = Run.load(write_run(tmp_path / "cand", "results_full.json"))
    verdict = {"verdict": "refused", "exit_code": 2, "message": "Refused: different GPU model", "cases": []}
    section = compare.section(candidate, Run.load(FIXTURES / "results_reference.json"), verdict)
    texts = [block.text for block in section.blocks if block.kind == "paragraph"]
    assert "Refused: different GPU model" in texts and any("not judged" in text for text in texts)


@pytest.mark.parametrize("verdict,field", [([], "verdict"), ({"cases": []}, "'verdict'"),
                                           ({"verdict": "pass", "cases": [1]}, "'cases'")])
def test_malformed_verdict_is_refused_naming_the_field(tmp_path, verdict, field):
    with pytest.raises(ValueError, match=field):
        reports.build_report(write_run(tmp_path / "run", "results_nasty.json"), verdict=verdict)


def test_report_command_passes_the_gates_own_verdict(tmp_path):
    from harness.cli import main

    candidate = tmp_path / "ci-3"
    candidate.mkdir()
    (candidate / "results.json.gz").write_bytes((GATE_SAMPLES / "ci-3" / "results.json.gz").read_bytes())
    assert main(["report", str(candidate), "--compare", str(GATE_SAMPLES / "ci-1")]) == 0
    page = (candidate / "report.html").read_text()
    stored = json.loads((GATE_SAMPLES / "verdict-ci-1-vs-ci-3" / "verdict.json").read_text())
    assert stored["message"] in page  # the gate's message, its own outcome names
    assert "No gate verdict was given" not in page


# ---------------------------------------------------------------- building


def test_build_report_writes_where_asked(tmp_path):
    run_dir = write_run(tmp_path / "run", "results_nasty.json")
    out = reports.build_report(run_dir / "results.json", out_path=tmp_path / "pages" / "nasty.html")
    assert out == tmp_path / "pages" / "nasty.html" and out.is_file()
    assert not (run_dir / "report.html").exists()


@pytest.mark.parametrize("content", ['{"schema": 2, "cases": []}', '{"schema": 9, "cases": []}', "not json", None])
def test_build_report_rejects_what_is_not_a_results_file(tmp_path, content):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(ValueError):
        reports.build_report(tmp_path)


def test_empty_run_builds_with_notes(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"schema": 1, "run_id": "empty", "cases": []}))
    page = outline(reports.build_report(run_dir).read_text())
    assert {name for name, section in page.sections.items() if not section["empty"]} == {"answers"}
    assert page.figure_ids == []
