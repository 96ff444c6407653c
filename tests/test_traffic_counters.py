"""The SM counters read in the ncu traffic pass (`harness.measure.ncu_counters`, `harness.measure.traffic`):
duration-weighted means over a call's kernels, missing or refused metrics, the ``--query-metrics`` filter and
the bytes-only retry (with a fake ncu), and the report's counters table (`reports.sections.traffic`)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from test_report import write_run

import reports
from baselines.base import Availability
from baselines.problem import Problem
from harness.measure import ncu_counters as counters
from harness.measure import traffic
from reports.blocks import Paragraph
from reports.formatting import MISSING
from reports.run import Run
from reports.sections import traffic as traffic_section
from reports.tables import Table

HEADER = ("ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
          "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value")
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
SM_THROUGHPUT = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
REASONS = ("long_scoreboard", "barrier", "wait", "math_pipe_throttle")


def kernel(ns: float, tensor: tuple[float, float, float], occupancy: float, sm: float, stalls: dict[str, float],
           other: float = 0.0, read: int = 1_000_000) -> dict[str, tuple[str, str]]:
    """One launch's metrics as ncu prints them: {metric: (unit, value)}. ``tensor`` is (all, gmma, hmma);
    stall reasons not given are 0, ``selected`` is 1 and the total adds ``other`` (reasons not asked for)."""
    all_reasons = {reason: 0.0 for reason in counters.STALL_REASONS} | {"selected": 1.0} | stalls
    metrics = {"dram__bytes_read.sum": ("byte", f"{read:,}"), "dram__bytes_write.sum": ("byte", "1,000"),
               "lts__t_bytes.sum": ("byte", "5,000"), "gpu__time_duration.sum": ("nsecond", f"{ns:,}"),
               counters.TENSOR_ALL: ("%", str(tensor[0])), counters.TENSOR_GMMA: ("%", str(tensor[1])),
               counters.TENSOR_HMMA: ("%", str(tensor[2])), OCCUPANCY: ("%", str(occupancy)),
               SM_THROUGHPUT: ("%", str(sm)), counters.CPI_METRIC: ("", str(sum(all_reasons.values()) + other))}
    metrics |= {counters.stall_metric(reason): ("", str(value)) for reason, value in all_reasons.items()}
    return metrics


def ncu_csv(launches: list[dict[str, tuple[str, str]]]) -> str:
    out = io.StringIO()
    out.write("==PROF== Connected to process 7 (/usr/bin/python3)\n")
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    for launch_id, metrics in enumerate(launches):
        for metric, (unit, value) in metrics.items():
            writer.writerow([launch_id, 7, "python3", "127.0.0.1", f"kernel_{launch_id}", 1, 7, "(256, 1, 1)",
                             "(132, 1, 1)", 0, "9.0", "Command line profiler metrics", metric, unit, value])
    out.write("==PROF== Disconnected from process 7\n")
    return out.getvalue()


# A wgmma kernel (busy tensor pipe, low occupancy, memory waits) and an mma.sync one (barrier-bound).
WGMMA = dict(tensor=(80.0, 80.0, 0.0), occupancy=12.5, sm=90.0,
             stalls={"long_scoreboard": 4.0, "barrier": 1.0, "wait": 0.4}, other=1.0)
HMMA = dict(tensor=(20.0, 0.0, 20.0), occupancy=50.0, sm=30.0,
            stalls={"barrier": 2.0, "wait": 1.2, "math_pipe_throttle": 1.6})


def two_kernels(ns_a: float, ns_b: float, replace: dict | None = None) -> list[dict]:
    """The two-kernel call, the first launch's metrics changed by ``replace`` ({metric: (unit, value) or None})."""
    first = kernel(ns_a, **WGMMA)
    for metric, cell in (replace or {}).items():
        if cell is None:
            del first[metric]
        else:
            first[metric] = cell
    return traffic.parse_ncu_csv(ncu_csv([first, kernel(ns_b, **HMMA)]))


# ---------------------------------------------------------------- weighted aggregation


@pytest.mark.parametrize("ns_a,ns_b,top", [
    (10_000, 30_000, [("barrier", 1.75), ("math_pipe_throttle", 1.2), ("long_scoreboard", 1.0)]),  # tie: by name
    (30_000, 10_000, [("long_scoreboard", 3.0), ("barrier", 1.25), ("wait", 0.6)]),  # selected (1.0) not ranked
    (20_000, 20_000, [("long_scoreboard", 2.0), ("barrier", 1.5), ("math_pipe_throttle", 0.8)]),
])
def test_counters_are_weighted_by_kernel_duration(ns_a, ns_b, top):
    summary = traffic.summarize_launches(two_kernels(ns_a, ns_b))
    w_a, w_b = ns_a / (ns_a + ns_b), ns_b / (ns_a + ns_b)
    assert summary["launches"] == 2 and summary["dram_read_bytes"] == 2_000_000  # the bytes still sum
    assert summary["kernel_ms"] == pytest.approx((ns_a + ns_b) / 1e6)
    assert summary["tensor_pipe_pct"] == pytest.approx(80 * w_a + 20 * w_b)
    assert summary["tensor_pipe_metric"] == counters.TENSOR_ALL
    assert summary["tensor_gmma_pct"] == pytest.approx(80 * w_a)
    assert summary["tensor_hmma_pct"] == pytest.approx(20 * w_b)
    assert summary["achieved_occupancy_pct"] == pytest.approx(12.5 * w_a + 50 * w_b)
    assert summary["sm_throughput_pct"] == pytest.approx(90 * w_a + 30 * w_b)
    assert summary["warp_cycles_per_issue"] == pytest.approx(7.4 * w_a + 5.8 * w_b)
    assert summary["stall_cycles_per_issue"]["selected"] == pytest.approx(1.0)
    assert summary["stall_other_cycles_per_issue"] == pytest.approx(1.0 * w_a)
    assert [(s["reason"], pytest.approx(s["cycles_per_issue"])) for s in summary["top_stalls"]] == top
    assert "weighted by kernel duration" in summary["counters_note"]
    json.dumps(summary)  # results.json must be able to hold it


@pytest.mark.parametrize("replace,absent,kept", [
    ({OCCUPANCY: ("%", "n/a")}, ["achieved_occupancy_pct"], ["tensor_pipe_pct", "sm_throughput_pct"]),
    ({SM_THROUGHPUT: None}, ["sm_throughput_pct"], ["achieved_occupancy_pct", "warp_cycles_per_issue"]),
    ({OCCUPANCY: ("Mbyte", "12")}, ["achieved_occupancy_pct"], ["sm_throughput_pct"]),  # a unit we do not read
    ({counters.CPI_METRIC: ("", "n/a")}, ["warp_cycles_per_issue", "stall_other_cycles_per_issue"],
     ["tensor_pipe_pct"]),
    ({counters.stall_metric("long_scoreboard"): ("", "n/a")}, ["stall_other_cycles_per_issue"],
     ["warp_cycles_per_issue", "achieved_occupancy_pct"]),
    ({"lts__t_bytes.sum": ("byte", "n/a")}, ["l2_bytes"], ["tensor_pipe_pct", "dram_bytes"]),
])
def test_a_missing_metric_leaves_the_rest(replace, absent, kept):
    summary = traffic.summarize_launches(two_kernels(10_000, 30_000, replace))
    assert all(summary[key] is None for key in absent), {key: summary[key] for key in absent}
    assert all(summary[key] is not None for key in kept)
    assert summary["dram_read_bytes"] == 2_000_000 and summary["kernel_ms"] == pytest.approx(0.04)


def test_a_missing_stall_reason_is_not_ranked():
    summary = traffic.summarize_launches(two_kernels(10_000, 30_000, {counters.stall_metric("barrier"): None}))
    assert summary["stall_cycles_per_issue"]["barrier"] is None
    assert [s["reason"] for s in summary["top_stalls"]] == ["math_pipe_throttle", "long_scoreboard", "wait"]


@pytest.mark.parametrize("replace,pct,metric", [
    ({counters.TENSOR_ALL: ("%", "n/a")}, 20.0, counters.TENSOR_GMMA),  # the busier sub-pipe, never the sum
    ({counters.TENSOR_ALL: None, counters.TENSOR_GMMA: None}, 15.0, counters.TENSOR_HMMA),
    ({counters.TENSOR_ALL: None, counters.TENSOR_GMMA: None, counters.TENSOR_HMMA: ("%", "n/a")}, None, None),
])
def test_tensor_pipe_falls_back_to_a_subpipe(replace, pct, metric):
    summary = traffic.summarize_launches(two_kernels(10_000, 30_000, replace))
    assert summary["tensor_pipe_pct"] == (None if pct is None else pytest.approx(pct))
    assert summary["tensor_pipe_metric"] == metric


def test_no_launches_means_no_counters():
    summary = traffic.summarize_launches([])
    assert summary["tensor_pipe_pct"] is None and summary["top_stalls"] == []
    assert set(summary["stall_cycles_per_issue"]) == set(counters.STALL_REASONS)


# ---------------------------------------------------------------- which metrics to ask for


LISTING = """Device NVIDIA H200 (GH100)
------------------------------------------- --------- ---------------------------------
Metric Name                                 Metric Type Metric Description
------------------------------------------- --------- ---------------------------------
dram__bytes_read                            Counter   # of bytes read from DRAM
{names}
"""


def listing(skip: tuple[str, ...] = ()) -> str:
    names = {counters.base_name(metric) for metric in (*traffic.NCU_METRICS, *counters.COUNTER_METRICS)}
    return LISTING.format(names="\n".join(f"{name:<44} Ratio     something" for name in sorted(names - set(skip))))


def test_choose_metrics_asks_only_for_listed_counters():
    gmma = counters.base_name(counters.TENSOR_GMMA)
    listed = counters.parse_metric_listing(listing(skip=(gmma,)))
    assert "dram__bytes_read" in listed and gmma not in listed and "Metric" not in listed
    asked, skipped = counters.choose_metrics(list(traffic.NCU_METRICS), listed)
    assert skipped == [counters.TENSOR_GMMA] and counters.TENSOR_GMMA not in asked
    assert asked[:4] == list(traffic.NCU_METRICS) and counters.TENSOR_ALL in asked
    asked, skipped = counters.choose_metrics(list(traffic.NCU_METRICS), None)  # no listing: ask for all
    assert skipped == [] and asked == [*traffic.NCU_METRICS, *counters.COUNTER_METRICS]
    refused = {"sm__warps_active", counters.CPI_METRIC, "dram__bytes_read"}  # a byte metric is still asked for
    asked, skipped = counters.choose_metrics(list(traffic.NCU_METRICS), None, refused)
    assert skipped == [OCCUPANCY, counters.CPI_METRIC] and "dram__bytes_read.sum" in asked


def test_metric_count_stays_modest():
    assert len(traffic.NCU_METRICS) + len(counters.COUNTER_METRICS) <= 24
    assert all(".pct_of_peak" in m or m.endswith(".ratio") for m in counters.COUNTER_METRICS)
    assert not any("pcsamp" in m for m in counters.COUNTER_METRICS)  # no sampling pass


@pytest.mark.parametrize("output,refused", [
    ("==PROF== Connected\n==ERROR== Failed to find metric regex:^sm__foo\\.(sum|avg)$\n", "sm__foo"),
    (f"==ERROR== Failed to find metric {counters.TENSOR_GMMA}\n", "sm__pipe_tensor_op_gmma_cycles_active"),
    ("==ERROR== Metric sm__bar is not supported on this chip\n", "Metric sm__bar is not supported on this chip"),
    ("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access the metric counters\n", None),
    ("==ERROR== Failed to profile kernel\n", None),
    ("", None),
])
def test_unknown_metric(output, refused):
    assert counters.unknown_metric(output) == refused


# ---------------------------------------------------------------- a fake ncu: listing, refusal, retry

FAKE_NCU = '''#!{python}
"""A stand-in for ncu: logs its calls, lists metrics, refuses some names like ncu, else writes the CSV
rows of the metrics asked for to --log-file."""
import csv, io, json, pathlib, sys
args = sys.argv[1:]
log = pathlib.Path({calls!r})
log.write_text(json.dumps([*(json.loads(log.read_text()) if log.exists() else []), args]))
if args == ["--query-metrics"]:
    if {listing!r} is None:
        raise SystemExit(1)
    print({listing!r})
    raise SystemExit(0)
asked = args[args.index("--metrics") + 1].split(",")
out = pathlib.Path(args[args.index("--log-file") + 1])
refused = [m for m in asked if m.split(".")[0] in {refuse!r}]
if refused:
    out.write_text("==PROF== Connected to process 7\\n==ERROR== Failed to find metric regex:^"
                   + refused[0].split(".")[0] + "\\\\.(sum|avg|ratio)$\\n")
    raise SystemExit(1)
lines = {csv_text!r}.splitlines()
keep = [l for l in lines if not l.startswith('"0"') and not l.startswith('"1"')
        or next(csv.reader(io.StringIO(l)))[12] in asked]
out.write_text("\\n".join(keep) + "\\n")
'''
CASE = {"method": {"method": "sdpa_cudnn"}, "problem": Problem(height=8, width=8, text_tokens=16).to_dict()}


@pytest.fixture
def fake_ncu(tmp_path, monkeypatch):
    """Install a fake ncu (``listing``: its --query-metrics output or None; ``refuse``: base names it does not
    know); returns a function giving the calls it got."""
    def install(listing: str | None = None, refuse: tuple[str, ...] = ()):
        script, calls = tmp_path / "ncu", tmp_path / "calls.json"
        text = ncu_csv([kernel(10_000, **WGMMA), kernel(30_000, **HMMA)])
        script.write_text(FAKE_NCU.format(python=sys.executable, calls=str(calls), listing=listing,
                                          refuse=set(refuse), csv_text=text))
        script.chmod(0o755)
        monkeypatch.setattr(traffic, "find_ncu", lambda: str(script))
        monkeypatch.setattr(traffic, "ncu_available", lambda: Availability(True, "fake"))
        monkeypatch.setattr(traffic, "REFUSED_COUNTERS", {})
        return lambda: json.loads(calls.read_text())
    traffic.metric_listing.cache_clear()
    yield install
    traffic.metric_listing.cache_clear()


def profiled(calls: list[list[str]]) -> list[list[str]]:
    """The --metrics list of each profiling call."""
    return [call[call.index("--metrics") + 1].split(",") for call in calls if "--metrics" in call]


def test_one_ncu_pass_gives_bytes_and_counters(fake_ncu, tmp_path):
    calls = fake_ncu(listing=listing())
    result = traffic.measure_traffic(CASE, tmp_path / "out")
    assert result["status"] == "ok" and result["dram_read_bytes"] == 2_000_000
    assert result["tensor_pipe_pct"] == pytest.approx(35.0) and result["counters_reason"] is None
    assert result["counters_skipped"] == []
    assert len(profiled(calls())) == 1


def test_unlisted_counters_are_not_asked_for(fake_ncu, tmp_path):
    calls = fake_ncu(listing=listing(skip=("sm__pipe_tensor_op_gmma_cycles_active", "sm__pipe_tensor_cycles_active")))
    first = traffic.measure_traffic(CASE, tmp_path / "a")
    second = traffic.measure_traffic(CASE, tmp_path / "b")
    assert sum(call == ["--query-metrics"] for call in calls()) == 1  # the listing is read once
    asked = profiled(calls())
    assert len(asked) == 2 and counters.TENSOR_GMMA not in asked[0] and counters.TENSOR_HMMA in asked[0]
    assert first["counters_skipped"] == [counters.TENSOR_ALL, counters.TENSOR_GMMA]
    assert first["tensor_pipe_pct"] == pytest.approx(15.0)  # the hmma sub-pipe: gmma was not asked for
    assert first["tensor_pipe_metric"] == counters.TENSOR_HMMA and second["status"] == "ok"


@pytest.mark.parametrize("listed", [None, "garbage\nwithout names\n"])  # no usable listing: ask for everything
def test_an_unknown_counter_falls_back_to_the_byte_metrics(fake_ncu, tmp_path, listed):
    calls = fake_ncu(listing=listed, refuse=("sm__pipe_tensor_op_gmma_cycles_active",))
    result = traffic.measure_traffic(CASE, tmp_path / "out", kernel_regex="kernel")
    assert result["status"] == "ok", result
    assert result["dram_read_bytes"] == 2_000_000 and result["l2_bytes"] == 10_000
    assert result["kernel_ms"] == pytest.approx(0.04) and result["kernel_regex"] == "kernel"
    assert all(result[key] is None for key in ("tensor_pipe_pct", "achieved_occupancy_pct", "sm_throughput_pct",
                                               "warp_cycles_per_issue"))
    assert result["top_stalls"] == [] and "sm__pipe_tensor_op_gmma_cycles_active" in result["counters_reason"]
    asked = profiled(calls())
    assert len(asked) == 2 and counters.TENSOR_GMMA in asked[0] and asked[1] == list(traffic.NCU_METRICS)
    retried = Path(result["csv_path"])
    assert retried.name.endswith("-bytes-only.csv")
    first = retried.with_name(retried.name.replace("-bytes-only", ""))
    assert "Failed to find metric" in first.read_text()  # the refused attempt is kept


def test_a_refused_counter_is_not_asked_for_again(fake_ncu, tmp_path):
    calls = fake_ncu(listing=None, refuse=("sm__pipe_tensor_op_gmma_cycles_active",))
    first = traffic.measure_traffic(CASE, tmp_path / "a")
    second = traffic.measure_traffic(CASE, tmp_path / "b")
    assert first["tensor_pipe_pct"] is None and first["dram_read_bytes"] == second["dram_read_bytes"] == 2_000_000
    assert len(profiled(calls())) == 3  # refused, bytes only, then the next case without the refused name
    assert second["counters_reason"] is None and second["counters_skipped"] == [counters.TENSOR_GMMA]
    assert second["tensor_pipe_pct"] == pytest.approx(35.0) and second["top_stalls"]


def test_a_refused_byte_metric_fails_after_one_retry(fake_ncu, tmp_path):
    calls = fake_ncu(listing=None, refuse=("dram__bytes_read",))
    result = traffic.measure_traffic(CASE, tmp_path)
    assert result["status"] == "failed" and "Failed to find metric" in result["reason"]
    assert len(profiled(calls())) == 2


# ---------------------------------------------------------------- the report's counters table

COUNTERS = {"tensor_pipe_pct": 48.2, "achieved_occupancy_pct": 12.4, "sm_throughput_pct": 71.0,
            "warp_cycles_per_issue": 6.4,
            "top_stalls": [{"reason": "barrier", "cycles_per_issue": 2.1},
                           {"reason": "long_scoreboard", "cycles_per_issue": 1.5},
                           {"reason": "wait", "cycles_per_issue": 0.9}]}
WITH_COUNTERS, REFUSED = "2048x2048/hilberta_t16/layer0", "2048x2048/sdpa_cudnn/layer0"


def counters_run(tmp_path, counted: bool = True) -> Run:
    def mutate(results):
        for row in results["cases"]:
            if counted and row["case"] == WITH_COUNTERS:
                row["traffic"].update(COUNTERS)
            if counted and row["case"] == REFUSED:
                row["traffic"].update(tensor_pipe_pct=None, top_stalls=[], counters_reason="ncu refused 'sm__x'")
    return Run.load(write_run(tmp_path / "run", "results_full.json", mutate))


def counters_table(run: Run) -> tuple[Table | None, list[str]]:
    section = traffic_section.section(run)
    tables = [block for block in section.blocks if isinstance(block, Table) and "tensor pipe" in block.headings]
    notes = [block.text for block in section.blocks if isinstance(block, Paragraph)]
    return (tables[0] if tables else None), notes


def test_report_shows_the_counters_and_a_dash_where_missing(tmp_path):
    run = counters_run(tmp_path)
    table, notes = counters_table(run)
    assert table is not None and table.headings[-4:] == [
        "tensor pipe", "achieved occupancy", "SM throughput", "top 3 stall reasons (cycles per issued instruction)"]
    labels = dict(zip(run.frame["case"], run.frame["label"]))
    rows = {row[0]: row[-4:] for row in table.rows}
    assert rows[labels[WITH_COUNTERS]] == ["48.2 %", "12.4 %", "71.0 %",
                                           "barrier 2.10, long scoreboard 1.50, wait 0.900 (of 6.40)"]
    assert rows[labels[REFUSED]] == [MISSING] * 4
    assert any(f"No SM counters for {labels[REFUSED]} at 2048x2048: ncu refused 'sm__x'" in note for note in notes)
    page = reports.render_report(run)
    assert "top 3 stall reasons" in page and "barrier 2.10, long scoreboard 1.50" in page


def test_report_without_counters_says_so(tmp_path):
    table, notes = counters_table(counters_run(tmp_path, counted=False))
    assert table is None and any("No SM counters" in note for note in notes)


@pytest.mark.parametrize("top,total,shown", [
    ([{"reason": "long_scoreboard", "cycles_per_issue": 3.0}], None, "long scoreboard 3.00"),
    ([{"reason": "wait", "cycles_per_issue": None}, "junk"], 5.0, None),
    ("not a list", 5.0, None),
    ([], 5.0, None),
])
def test_stalls_text(top, total, shown):
    assert traffic_section.stalls_text(top, total) == shown
