"""A/A control twins: the suite's [control] table, the twin cases, the runner's aa_pairs and its warning."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness.core.results import load_results
from harness.core.runner import print_summary, run_suite
from harness.core.suite import SuiteError, load_suite

SUITE = """\
description = "aa"
resolutions = ["128x128"]
text_tokens = 4
heads = 2
head_dim = 16
dtype = "float32"
layers = [0]
methods = ["sdpa_math", "flex_dense"]
[timing]
warmup_ms = 0
min_samples = 4
max_samples = 4
budget_ms = 1
rounds = 4
[control]
{control}
[gate]
{gate}
"""


def write(tmp_path: Path, control: str = 'aa = ["sdpa_math"]', gate: str = "threshold_pct = 5") -> Path:
    path = tmp_path / "aa.toml"
    path.write_text(SUITE.format(control=control, gate=gate))
    return path


def test_twin_cases_follow_their_group(tmp_path):
    suite = load_suite(write(tmp_path))
    ids = [case.case_id for case in suite.cases()]
    assert ids == ["128x128/sdpa_math/layer0", "128x128/flex_dense/layer0", "128x128/sdpa_math~aa/layer0"]
    twin = suite.cases()[-1]
    assert twin.aa_of == "128x128/sdpa_math/layer0" and suite.control.limit_pct == 1.5


@pytest.mark.parametrize("control, gate, needle", [
    ('aa = ["nope"]', "", "control.aa: 'nope' is not a method"),
    ('aa_limit_pct = 0', "", "aa_limit_pct"),
    ('bogus = 1', "", "unknown key 'control.bogus'"),
    ('aa = ["sdpa_math"]', 'mode = "sideways"', "gate.mode"),
])
def test_bad_control_and_gate_keys_name_key_and_line(tmp_path, control, gate, needle):
    with pytest.raises(SuiteError, match=needle) as info:
        load_suite(write(tmp_path, control, gate))
    assert info.value.line is not None and info.value.line > 1


@pytest.mark.parametrize("mode", ["absolute", "ratio", "both"])
def test_gate_mode_parsed(tmp_path, mode):
    assert load_suite(write(tmp_path, gate=f'mode = "{mode}"')).gate.mode == mode


def test_runner_writes_twin_and_pair(tmp_path):
    out = run_suite(load_suite(write(tmp_path)), tmp_path / "run", device="cpu", progress=False)
    data = load_results(out)
    rows = {row["case"]: row for row in data["cases"]}
    twin = rows["128x128/sdpa_math~aa/layer0"]
    assert twin["aa_of"] == "128x128/sdpa_math/layer0" and twin["method"] == "sdpa_math~aa"
    assert twin["samples_round"] == rows["128x128/sdpa_math/layer0"]["samples_round"]
    (pair,) = data["aa_pairs"]
    assert pair["a"] == "128x128/sdpa_math/layer0" and pair["b"] == twin["case"]
    assert pair["limit_pct"] == 1.5 and isinstance(pair["agree"], bool)
    assert pair["ci95"][0] <= pair["ratio"] <= pair["ci95"][1]


@pytest.mark.parametrize("agree, warned", [(True, False), (False, True)])
def test_summary_warns_on_disagreeing_pair(tmp_path, agree, warned):
    results = {"cases": [], "complete": True,
               "aa_pairs": [{"a": "x/m/layer0", "b": "x/m~aa/layer0", "ratio": 1.04, "ci95": [1.02, 1.06],
                             "limit_pct": 1.5, "agree": agree}]}
    stream = io.StringIO()
    print_summary(results, tmp_path, stream)
    assert ("WARNING: A/A pair x/m~aa/layer0 / x/m/layer0 disagrees" in stream.getvalue()) == warned


@pytest.mark.parametrize("agree, exit_code", [(True, 0), (False, 2)])
def test_gate_refuses_a_run_whose_pair_disagrees(tmp_path, agree, exit_code):
    """End to end: two runner runs, the candidate's A/A pair forced to agree or not, then `harness gate`."""
    import subprocess
    import sys

    suite = load_suite(write(tmp_path))
    ref = run_suite(suite, tmp_path / "ref", device="cpu", progress=False)
    cand_dir = run_suite(suite, tmp_path / "cand", device="cpu", progress=False)
    for out, agrees in ((ref, True), (cand_dir, agree)):  # CPU timings are noisy: set both pairs' verdicts
        data = load_results(out)
        data["aa_pairs"][0]["agree"] = agrees
        (out / "results.json").write_text(json.dumps(data))
    gate = subprocess.run([sys.executable, "-m", "harness", "gate", "--reference", str(ref), "--candidate",
                           str(cand_dir), "--threshold", "1000", "--out", str(tmp_path / "verdict")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert gate.returncode == exit_code, gate.stdout + gate.stderr
    assert ("A/A" in gate.stdout + gate.stderr) == (not agree)
