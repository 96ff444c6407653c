"""The report's parts on their own, from fixture results: baseline picking and phase spreads
(`reports.speedups`), anomaly flags (`reports.anomalies`), roofline ceilings (`reports.ceilings`), formatting
and human names (`reports.formatting`, `reports.names`) and the tidy rows table (`reports.rows`). The page as
a whole is tested in test_report.py, whose fixture helpers these tests share.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pandas as pd
import pytest
from test_report import FIXTURES, ROOT, figure_specs, outline, page_of, without_bundle, write_run

import reports
from reports.anomalies import find_anomalies
from reports.ceilings import ceilings
from reports.formatting import MISSING, fmt_bytes, fmt_duration, fmt_interval, fmt_ms, fmt_pct, fmt_ratio, fmt_text
from reports.names import display_value, human_name
from reports.rows import method_summary, rows_frame, timed_kernels
from reports.run import Run
from reports.speedups import family_speedups

# ---------------------------------------------------------------- baselines and phase spreads

def frame_of(records: list[dict]) -> pd.DataFrame:
    base = {"kind": "kernel", "status": "ok", "problem": {"resolution": "2048x2048", "layer": 0}}
    rows = []
    for record in records:
        row = copy.deepcopy(base)
        layer = record.pop("layer", 0)
        row["problem"]["layer"] = layer
        row.update(record, case=f"{record['method']}/{layer}", label=record["method"],
                   ci95_ms=[record["median_ms"] * 0.99, record["median_ms"] * 1.01])
        rows.append(row)
    return rows_frame(rows)


@pytest.mark.parametrize("candidates,picked", [
    ([("sta_far", 0.09, 1.0), ("sta_near", 0.21, 3.0)], "sta_near"),  # nearest density, not the fastest
    ([("sta_a", 0.20, 3.0), ("sta_b", 0.24, 2.0)], "sta_b"),  # equally near: the faster
])
def test_matched_density_baseline_is_the_nearest_density(candidates, picked):
    records = [{"method": "hilberta_t16", "category": "hilberta", "median_ms": 1.0, "density": {"token": 0.22}},
               {"method": "sdpa", "category": "dense", "dense_reference": True, "median_ms": 4.0,
                "density": {"token": 1.0}}]
    records += [{"method": m, "category": "sliding_tile", "median_ms": t, "density": {"token": d}}
                for m, d, t in candidates]
    table = family_speedups(frame_of(records)).set_index("family")
    assert table.loc["sliding tiles (STA)", "baseline"] == picked
    assert table.loc["dense attention", "speedup"] == pytest.approx(4.0)
    assert "FA4 block-sparse" not in table.index  # optional family, absent from the run: not listed


@pytest.mark.parametrize("ours_ms, picked", [(1.4, "hilberta_fa4split_t16"), (1.6, "hilberta_t16")])
def test_fa4_pieces_count_as_hilberta_and_block_sparsity_as_its_peer(ours_ms, picked):
    """HilbertA's fastest implementation (the Triton kernel or the dense-FA4-pieces one) against FA4 block
    sparsity on the same mask; FA4 dense stays a dense reference."""
    records = [{"method": "hilberta_t16", "category": "hilberta", "median_ms": 1.5, "density": {"token": 0.22}},
               {"method": "hilberta_fa4split_t16", "category": "hilberta", "median_ms": ours_ms,
                "density": {"token": 0.22}},
               {"method": "hilberta_fa4_t16", "category": "hilberta", "median_ms": 1.45, "density": {"token": 0.22}},
               {"method": "fa4_dense", "category": "dense", "dense_reference": True, "median_ms": 4.6,
                "density": {"token": 1.0}}]
    table = family_speedups(frame_of(records)).set_index("family")
    fa4 = table.loc["FA4 block-sparse, same mask"]
    assert (fa4["hilberta"], fa4["baseline"]) == (picked, "hilberta_fa4_t16")
    assert fa4["speedup"] == pytest.approx(1.45 / min(ours_ms, 1.5))
    assert table.loc["dense attention", "baseline"] == "fa4_dense"


def test_phase_spread_pairs_layers_and_ignores_aa_twins():
    records = [{"method": "hilberta_t16", "category": "hilberta", "median_ms": ms, "layer": layer,
                "density": {"token": 0.22}} for layer, ms in enumerate([1.0, 1.1])]
    records += [{"method": "raster", "category": "control", "median_ms": ms, "layer": layer,
                 "density": {"token": 0.22}} for layer, ms in enumerate([0.9, 1.32])]
    records += [{"method": "hilberta_t16", "category": "hilberta", "median_ms": 9.0, "layer": 0, "aa_of": "x",
                 "density": {"token": 0.22}, "case": "twin"}]
    frame = frame_of(records)
    frame.loc[frame["aa_of"].notna(), "case"] = "twin"
    table = family_speedups(frame).set_index("family")
    control = table.loc["raster-order control"]
    assert control["phases"] == 2  # the A/A twin is not a third phase
    assert control["speedup"] == pytest.approx(1.11 / 1.05)
    assert (control["spread_lo"], control["spread_hi"]) == pytest.approx((0.9, 1.2))


# ---------------------------------------------------------------- anomalies


def set_row(case: str, path: tuple, value):
    def mutate(results):
        row = next(r for r in results["cases"] if r["case"] == case)
        for key in path[:-1]:
            row = row.setdefault(key, {})
        row[path[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate,what", [
    (set_row("2048x2048/hilberta_t16/layer0", ("traffic", "dram_bytes"), 5e9), "traffic far above compulsory"),
    (set_row("2048x2048/hilberta_t16/layer0", ("traffic", "dram_bytes"), 3e8), "traffic below compulsory"),
    (set_row("2048x2048/hilberta_t16/layer0", ("conditions", "power_w", "max"), 906.0), "power above the cap"),
    (set_row("1024x1024/flex_dense/layer0", ("setup_ms", "first_call"), 9e6), "first call (compile) time out of line"),
    (set_row("1024x1024/sdpa_cudnn/layer0", ("setup_ms", "layout"), 5e5), "layout time out of line"),
    (set_row("2048x2048/hilberta_t16/layer1", ("median_ms",), 2.5), "phase spread beyond the A/A limit"),
    (lambda r: r["aa_pairs"][1].update(agree=False), "A/A pair disagrees"),
])
def test_anomalies_are_flagged_from_the_data(tmp_path, mutate, what):
    def calm(results):  # a run with none of the anomalies, then one of them
        results["aa_pairs"][1].update(agree=True)
        for row in results["cases"]:
            traffic = row.get("traffic") or {}
            if traffic.get("dram_bytes"):
                traffic["dram_bytes"] = 2 * row["bytes"]["compulsory"]
            for watts in ((row.get("conditions") or {}).get("power_w") or {}, row.get("power") or {}):
                watts.update({k: 650.0 for k in ("max", "power_w_max") if k in watts})
            for key in ("layout", "first_call"):
                if (row.get("setup_ms") or {}).get(key):
                    row["setup_ms"][key] = 100.0
            if row["kind"] == "kernel" and row.get("median_ms") and row.get("problem"):
                row["median_ms"] = {"hilberta": 1.0}.get(row.get("category"), row["median_ms"])
        mutate(results)

    run = Run.load(write_run(tmp_path / "run", "results_v2.json", calm))
    flags = find_anomalies(run.frame, run.results)
    assert [flag.what for flag in flags] == [what]
    assert flags[0].why


def test_sample_anomalies_include_the_issue_examples():
    run = Run.load(ROOT / "docs" / "samples" / "h100" / "bench-2048")
    why: dict[str, str] = {}
    for flag in find_anomalies(run.frame, run.results):
        why[flag.what] = why.get(flag.what, "") + flag.why + "\n"
    assert "STA 16x8 tiles, 3x8 window at 2048x2048: 8.45 GB" in why["traffic far above compulsory"]
    assert "SDPA cuDNN" in why["traffic below compulsory"]
    assert "up to 849 W (HilbertA T=4" in why["power above the cap"]  # per-case windows, not the run-wide 906 W


# ---------------------------------------------------------------- ceilings


def run_frame(env: dict, extra: dict | None = None, clock: float | None = None) -> tuple[dict, pd.DataFrame]:
    row = {"kind": "kernel", "case": "x", "status": "ok", "traffic": {"l2_bytes": 4e9, "kernel_ms": 1.0}}
    if clock:
        row["conditions"] = {"sm_clock_mhz": {"median": clock}}
    return {"env": env, **(extra or {})}, rows_frame([row])


@pytest.mark.parametrize("env,extra,clock,tflops,source", [
    ({"gpu_name": "NVIDIA H100 80GB HBM3"}, {"ceilings": {"gemm_tflops": 700.0, "copy_gbps": 3000.0}}, None,
     700.0, "measured in this run"),
    ({"gpu_name": "NVIDIA H100 80GB HBM3", "nvml": {"max_sm_clock_mhz": 1980}}, None, 1485.0, 989.0 * 0.75,
     "datasheet NVIDIA H100 SXM"),
    ({"gpu_name": "NVIDIA H100 PCIe"}, None, None, 756.0, "datasheet NVIDIA H100 PCIe"),
    ({"gpu_name": "NVIDIA H200"}, {"ceilings": {"gemm_tflops": float("nan"), "copy_gbps": 4000.0}}, None, 989.0,
     "datasheet NVIDIA H200 SXM"),
])
def test_roofline_ceilings_say_where_they_come_from(env, extra, clock, tflops, source):
    found = ceilings(*run_frame(env, extra, clock))
    assert found.tflops == pytest.approx(tflops) and found.source.startswith(source)
    assert ("scaled by the SM clock" in found.source) == (clock is not None)
    assert found.l2_gbps == pytest.approx(4000.0) and "a floor" in found.l2_source


def test_unknown_card_has_no_ceilings():
    assert ceilings(*run_frame({"gpu_name": "NVIDIA A10"})) is None


def test_sample_roofline_lists_absent_methods_and_has_an_l2_roof(tmp_path):
    page = reports.render_report(Run.load(ROOT / "docs" / "samples" / "h100" / "bench-2048"))
    assert "compute scaled by the SM clock measured under load" in page
    assert "L2 roof: the highest L2 throughput reached here" in page
    assert "Not on the roofline: SDPA FlashAttention-2 at 2048x2048: no ncu traffic" in page


# ---------------------------------------------------------------- formatting and names


@pytest.mark.parametrize("render,value,shown", [
    (fmt_ms, None, MISSING), (fmt_ms, float("nan"), MISSING), (fmt_ms, 5.6291, "5.629"), (fmt_ms, True, MISSING),
    (fmt_ms, 12361.6, "12,362"), (fmt_duration, 12361.6, "12.4 s"), (fmt_duration, 63.48, "63.5 ms"),
    (fmt_ratio, float("inf"), "∞"), (fmt_ratio, 2.3, "2.30×"), (fmt_pct, 0.349, "34.9 %"),
    (fmt_bytes, 415_236_096, "415 MB"), (fmt_bytes, 85_017_493_504, "85.0 GB"), (fmt_bytes, 999.7e6, "1.00 GB"),
    (fmt_text, [], MISSING), (fmt_text, {"sm": 1980}, "sm: 1980"), (fmt_text, "<b>", "<b>"),
])
def test_formatters_keep_units_and_digits(render, value, shown):
    assert render(value) == shown


def test_interval_needs_both_ends():
    assert fmt_interval(1.0, None) == MISSING and fmt_interval(0.99, 1.01) == "[0.9900, 1.010]"


@pytest.mark.parametrize("key,value,shown", [
    ("git.reason", "from HILBERTA_GIT_COMMIT; git said: fatal: ambiguous argument 'HEAD'", "from HILBERTA_GIT_COMMIT"),
    ("git.reason", "fatal: not a git repository", "(error output of a tool, not shown)"),
    ("memory_bytes", 85017493504, "85.0 GB"), ("nvml.power_limit_w", 700.0, "700 W"),
    ("nvml.max_sm_clock_mhz", 1980, "1980 MHz"), ("cudnn_version", 91900, "91900"),
])
def test_display_values_have_units_and_hide_tool_errors(key, value, shown):
    assert display_value(key, value) == shown


@pytest.mark.parametrize("key,name", [("neighbour_share.r1", "neighbours kept within radius 1"),
                                      ("nvml.power_limit_w", "power cap"), ("some_new.field", "some new › field")])
def test_human_names(key, name):
    assert human_name(key) == name


def test_sample_page_shows_no_raw_field_names_or_byte_counts():
    text = without_bundle(reports.render_report(Run.load(ROOT / "docs" / "samples" / "h100" / "bench-2048")))
    for raw in ("neighbour_share.r1", "85017493504", "memory_bytes", "fatal:", "4.17×</td>"):
        assert raw not in text, raw


def test_rows_frame_turns_bad_values_into_missing():
    frame = rows_frame(json.loads((FIXTURES / "results_nasty.json").read_text())["cases"])
    nan_row = frame.set_index("case").loc["1024x1024/hilberta_t4/layer1"]
    assert math.isnan(nan_row["median_ms"]) and math.isnan(nan_row["ci_lo_ms"]) and nan_row["n_samples"] == 0
    odd = frame.set_index("case").loc["odd-kind"]
    assert math.isnan(odd["median_ms"]) and odd["method"] == "42"  # "fast" is no number
    assert math.isinf(frame.set_index("case").loc["2048x2048/sta_tile8x8_win3x3/layer0", "rel_err"])


def test_incorrect_or_untimed_rows_are_never_ranked():
    cases = json.loads((FIXTURES / "results_v2.json").read_text())["cases"]
    cheat = next(r for r in cases if r["method"] == "sdpa_flash" and r["problem"]["resolution"] == "2048x2048")
    cheat.update(status="incorrect", median_ms=0.001)  # fast but wrong: must not become the dense reference
    summary = method_summary(timed_kernels(rows_frame(cases))).set_index(["resolution", "method"])
    assert ("2048x2048", "sdpa_flash") not in summary.index
    assert summary.loc[("2048x2048", "hilberta_t16"), "fastest_dense_label"] == "SDPA cuDNN"
    assert summary.loc[("2048x2048", "hilberta_t16"), "phases"] == 4  # the A/A twin is not a fifth phase


# ---------------------------------------------------------------- sections: power, tables, tuning, charts


# ---------------------------------------------------------------- per-case conditions, energy


def test_power_table_shows_each_cases_own_conditions(tmp_path):
    v2_page, full_page = page_of(tmp_path / "v2", "results_v2.json"), page_of(tmp_path / "full", "results_full.json")
    cells = outline(v2_page).sections["power"]["cells"]
    clocks = [cell for cell in cells if re.fullmatch(r"1[6-9]\d0 MHz", cell)]
    assert len(set(clocks)) > 10  # one per case, not one run-wide value copied
    one_without = page_of(tmp_path, "results_v2.json", lambda r: r["cases"][0].pop("conditions"))
    assert outline(one_without).sections["power"]["cells"].count("not recorded") == 6  # that row's six cells
    assert "not recorded in this run, so those columns are left out" in full_page  # schema-1 rows carry none


def test_energy_relative_to_fastest_dense_and_at_the_cap(tmp_path):
    def at_cap(results):
        for row in results["cases"]:
            if isinstance(row.get("power"), dict) and row["power"].get("mean_watts"):
                row["power"]["mean_watts"] = 690.0

    run = Run.load(write_run(tmp_path / "cap", "results_v2.json", at_cap))
    page = reports.render_report(run)
    assert "ran at the 700 W power cap" in page and "energy is simply time x cap" in page
    section = outline(page).sections["power"]
    assert "1.00×" in section["cells"]  # the fastest dense kernel against itself


# ---------------------------------------------------------------- tables, tooltips, sorting


def test_numeric_cells_carry_sort_keys_and_derived_columns_tooltips(tmp_path):
    v2_page = page_of(tmp_path, "results_v2.json")
    assert re.search(r'<td data-v="0\.4\d+">0\.4', v2_page)
    tips = outline(v2_page).tips
    assert "DRAM bytes / compulsory bytes" in tips["total / compulsory"]
    assert tips["HilbertA speedup"] == "baseline ms / HilbertA ms"


# ---------------------------------------------------------------- tuning


def test_tuning_states_its_rule_and_marks_default_and_stored(tmp_path):
    full_page = page_of(tmp_path, "results_full.json")
    tuning = outline(full_page).sections["tuning"]
    assert "Fastest" not in " ".join(tuning["cells"])
    text = without_bundle(full_page)
    assert "Rule: the fastest median of the refine pass" in text and "★ = stored, D = default" in text
    assert "Stored launch configuration per kernel and size" in text
    cells = [cell for spec in figure_specs(full_page) for trace in spec["data"] if trace["type"] == "heatmap"
             for row in trace["text"] for cell in row]
    assert any(cell.endswith(" ★") for cell in cells) and any(cell.endswith(" D") for cell in cells)


def test_one_resolution_gets_no_latency_vs_resolution_chart(tmp_path):
    one = page_of(tmp_path, "results_v2.json",
                  lambda r: r.update(cases=[c for c in r["cases"] if (c.get("problem") or {}).get("resolution") != "1024x1024"]))
    assert "Latency vs resolution" not in one
    assert "Latency vs resolution" in page_of(tmp_path / "two", "results_v2.json")


@pytest.mark.parametrize("joules,se,warns", [
    ([1.5, 1.2], [0.33, 0.38], True),      # as in the H200 sample: 22-32 % standard error
    ([1.5, 1.2], [0.03, 0.05], False),     # a clean split
    ([1.5, 1.2], [None, None], False),     # back-to-back windows carry no standard error
])
def test_energy_noise_warns_only_when_the_split_is_noisy(joules, se, warns):
    from reports.sections.power import energy_noise

    frame = pd.DataFrame({"joules_per_call": joules, "joules_per_call_se": se}, dtype=float)
    assert (energy_noise(frame) is not None) is warns


# ---------------------------------------------------------------- where the wall time went


def test_environment_shows_where_the_wall_time_went_per_group_and_card(tmp_path):
    card_wall = {"startup_s": 3.6, "ceilings_s": 0.8, "groups": {"2048x2048": {"prepare_s": 12.8, "timing_s": 6.7}},
                 "total_s": 24.8}

    def with_wall(results):
        results["wall"] = {"startup_s": 4.2, "workers_s": 27.4, "merge_s": 0.1, "total_s": 31.6}
        results["env"]["spread"] = {"gpus": 3, "cards": [{"index": 0, "wall": card_wall, "started_s": 0.2,
                                                                "exited_s": 27.5}, {"index": 1, "wall": None},
                                                               {"index": 2, "wall": card_wall, "warm": {
                                                                   "pid": 4242, "runs": 3, "up_s": 125.0}}]}

    page = page_of(tmp_path, "results_v2.json", with_wall)
    cells = outline(page).sections["environment"]["cells"]
    assert "startup 4.20 s, workers 27.4 s, merge 100 ms, total 31.6 s" in cells
    assert ("startup 3.60 s, ceilings 800 ms, total 24.8 s (on the parent's clock: started 200 ms, exited 27.5 s)"
            in cells) and "prepare 12.8 s, timing 6.70 s" in cells
    assert "<dt>GPU 0: 2048x2048</dt>" in page and "<dt>GPU 1" not in page  # a card without a record: no line
    warm = [cell for cell in cells if "warm worker" in cell]  # only the card a warm worker ran says so
    assert warm == ["startup 3.60 s, ceilings 800 ms, total 24.8 s; a warm worker (pid 4242, up 125 s, "
                    "3 run(s) before this)"]
    without = outline(page_of(tmp_path / "plain", "results_v2.json")).sections["environment"]["cells"]
    assert not any("startup" in cell for cell in without)


def test_e2e_table_gives_each_step_against_the_fastest_dense_step_of_its_resolution(tmp_path):
    """results_full: SDPA cuDNN is the only dense method; HilbertA 2048 534.33 ms against 887.96 -> 1.66x, 1024
    158.91 against 184.89 -> 1.16x. With a faster dense row added at 2048 the ratio follows it, named."""
    cells = outline(page_of(tmp_path / "a", "results_full.json")).sections["e2e"]["cells"]
    speedups = [cell for cell in cells if "vs " in cell]
    assert any(cell.startswith("1.66×") and cell.endswith("vs SDPA cuDNN") for cell in speedups), speedups
    assert any(cell.startswith("1.16×") for cell in speedups) and any(cell.startswith("1.00×") for cell in speedups)

    def faster_dense(results):
        rows = [row for row in results["cases"] if row.get("case") == "2048x2048/e2e/sdpa_cudnn"]
        twin = copy.deepcopy(rows[0])
        twin.update(case="2048x2048/e2e/fa4_dense", method="fa4_dense", label="FA4 dense", median_ms=801.5,
                    ci95_ms=[800.0, 803.0], samples_ms=[801.5] * 12)
        twin["e2e"]["key_order_layers"] = 0
        results["cases"].append(twin)
        for row in results["cases"]:
            if row.get("case") == "2048x2048/e2e/hilberta_t16":
                row["e2e"]["key_order_layers"] = 42

    section = outline(page_of(tmp_path / "b", "results_full.json", faster_dense)).sections["e2e"]
    assert any(cell.startswith("1.50×") and cell.endswith("vs FA4 dense") for cell in section["cells"])
    assert "42" in section["cells"]  # the layers whose K and V the processor wrote in the method's key order
