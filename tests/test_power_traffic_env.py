"""NVML power/energy (with a fake pynvml), ncu traffic parsing and plumbing (with a fake ncu), and the
environment fingerprint, all on CPU."""

from __future__ import annotations

import json
import sys
import textwrap
import time
import types

import pytest
import torch

from baselines.base import Availability
from baselines.problem import Problem
from harness.core import ncu_target as _ncu_target
from harness.measure import envinfo, power, traffic
from harness.measure.power import PowerSample

# ---------------------------------------------------------------- NVML


class FakeNVMLError(Exception):
    pass


def fake_pynvml(*, instant=True, energy=True, reasons=0x4, init_error=False):
    """A pynvml stand-in: 350 W instant (300 W average), fixed clocks, and an energy counter (mJ) that
    the test's callable advances."""
    nv = types.ModuleType("pynvml")
    nv.state = {"energy_mj": 1_000_000}
    nv.NVMLError = FakeNVMLError
    nv.NVML_SUCCESS, nv.NVML_FI_DEV_POWER_INSTANT = 0, 186
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0

    def init():
        if init_error:
            raise FakeNVMLError("Driver Not Loaded")

    def handle_by_uuid(uuid):
        if uuid != "GPU-fake":
            raise FakeNVMLError("Not Found")
        return "handle"

    def field_values(handle, fields):
        if not instant:
            raise FakeNVMLError("Not Supported")
        assert fields == [186]
        return [types.SimpleNamespace(nvmlReturn=0, valueType=1, value=types.SimpleNamespace(uiVal=350_000))]

    def total_energy(handle):
        if not energy:
            raise FakeNVMLError("Not Supported")
        return nv.state["energy_mj"]

    nv.nvmlInit = init
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlSystemGetDriverVersion = lambda: "580.65.06"
    nv.nvmlDeviceGetHandleByUUID = handle_by_uuid
    nv.nvmlDeviceGetFieldValues = field_values
    nv.nvmlDeviceGetPowerUsage = lambda h: 300_000
    nv.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1755, 2: 2619}[kind]
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    nv.nvmlDeviceGetTemperature = lambda h, kind: 61
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: reasons
    nv.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetPerformanceState = lambda h: 0
    return nv


@pytest.fixture
def install_nvml(monkeypatch):
    """Install a module as ``pynvml`` (None = not installed) and re-probe; restores the probe after."""
    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        monkeypatch.setattr(power, "nvml_uuid", lambda device: "GPU-fake")
        monkeypatch.setattr(power, "synchronize", lambda device: None)  # the fake "cuda:0" has no queue
        power.nvml_available.cache_clear()
        return module
    yield install
    power.nvml_available.cache_clear()


def test_nvml_missing_means_unavailable_everywhere(install_nvml):
    install_nvml(None)  # `import pynvml` raises ImportError
    avail = power.nvml_available()
    assert not avail and "nvidia-ml-py" in avail.reason
    assert power.snapshot("cuda:0") == {"status": "unavailable", "reason": avail.reason}
    assert power.measure_energy(lambda: None, "cuda:0")["status"] == "unavailable"
    ran = []
    with power.PowerSampler("cuda:0") as sampler:
        ran.append(True)  # the measured block still runs
    assert ran and sampler.summary() == {"status": "unavailable", "reason": avail.reason}
    assert power.driver_version() is None


def test_nvml_init_failure_is_a_reason(install_nvml):
    install_nvml(fake_pynvml(init_error=True))
    avail = power.nvml_available()
    assert not avail and "Driver Not Loaded" in avail.reason


def test_cpu_device_is_unavailable(install_nvml):
    install_nvml(fake_pynvml())
    assert power.snapshot("cpu")["reason"] == "cpu is not a CUDA device"


def test_unknown_uuid_is_unavailable(install_nvml, monkeypatch):
    install_nvml(fake_pynvml())
    monkeypatch.setattr(power, "nvml_uuid", lambda device: "GPU-other")
    result = power.snapshot("cuda:0")
    assert result["status"] == "unavailable" and "Not Found" in result["reason"]


@pytest.mark.parametrize("mask,names", [
    (0, []), (None, []), (0x4, ["SwPowerCap"]), (0x1 | 0x80, ["GpuIdle", "HwPowerBrakeSlowdown"]),
    (0x8 | 0x20 | 0x40, ["HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown"]),
    (0x4 | 0x1000, ["SwPowerCap", "Unknown0x1000"]),
])
def test_decode_reasons(mask, names):
    assert power.decode_reasons(mask) == names


@pytest.mark.parametrize("instant,watts,source", [(True, 350.0, power.INSTANT_POWER_SOURCE),
                                                  (False, 300.0, power.AVERAGE_POWER_SOURCE)])
def test_snapshot_reads_limits_clocks_and_power(install_nvml, instant, watts, source):
    install_nvml(fake_pynvml(instant=instant, reasons=0x1 | 0x4))
    snap = power.snapshot("cuda:0")
    assert snap["status"] == "ok"
    assert snap["power_limit_w"] == 700.0 and snap["power_w"] == watts and snap["power_source"] == source
    assert (snap["sm_clock_mhz"], snap["mem_clock_mhz"], snap["max_sm_clock_mhz"]) == (1755, 2619, 1980)
    assert snap["temp_c"] == 61 and snap["throttle_reasons"] == ["GpuIdle", "SwPowerCap"]


@pytest.mark.parametrize("reasons,throttled", [(0x4, True), (0x1, False), (0x40, True), (0, False)])
def test_sampler_summary(install_nvml, reasons, throttled):
    install_nvml(fake_pynvml(reasons=reasons))
    with power.PowerSampler("cuda:0", interval_s=0.005) as sampler:
        pass
    summary = sampler.summary()
    assert summary["status"] == "ok" and summary["n_samples"] >= 2  # one at entry, one at exit
    assert summary["power_w_mean"] == 350.0 and summary["power_w_max"] == 350.0
    assert summary["sm_clock_mhz_min"] == 1755 and summary["sm_clock_mhz_median"] == 1755
    assert summary["temp_c_max"] == 61
    assert summary["throttle_reasons"] == power.decode_reasons(reasons)
    assert summary["throttled"] is throttled


def test_measure_energy_uses_the_counter(install_nvml):
    nv = install_nvml(fake_pynvml())
    calls = []

    def fn():  # each call "uses" 5 mJ
        calls.append(1)
        nv.state["energy_mj"] += 5

    result = power.measure_energy(fn, "cuda:0", min_window_s=0.05)
    assert result["status"] == "ok" and result["energy_source"] == "nvmlDeviceGetTotalEnergyConsumption"
    assert result["window_s"] >= 0.05
    assert result["calls"] == len(calls) - 1  # the sizing call is outside the window
    assert result["joules_per_call"] == pytest.approx(0.005)
    assert result["mean_watts"] == pytest.approx(0.005 * result["calls"] / result["window_s"])
    assert result["power_w_mean"] == 350.0 and result["throttle_reasons"] == ["SwPowerCap"]


def test_measure_energy_falls_back_to_sampled_power(install_nvml):
    install_nvml(fake_pynvml(energy=False))
    result = power.measure_energy(lambda: None, "cuda:0", min_window_s=0.05)
    assert result["energy_source"] == "mean sampled power x window"
    assert result["joules_per_call"] == result["sampled_joules_per_call"]
    assert result["mean_watts"] == pytest.approx(350.0)  # the fake's instant power


def test_measure_energy_rejects_empty_window():
    with pytest.raises(ValueError, match="min_window_s"):
        power.measure_energy(lambda: None, "cuda:0", min_window_s=0)


def test_sample_summaries_skip_missing_readings():
    samples = [PowerSample(0.0, 100.0, 1500, 2600, 60, 0x4), PowerSample(1.0, None, None, None, None, None),
               PowerSample(2.0, 300.0, 1700, 2600, 70, 0x1)]
    summary = power.summarize_samples(samples)
    assert summary["power_w_mean"] == 200.0 and summary["power_w_max"] == 300.0
    assert summary["sm_clock_mhz_min"] == 1500 and summary["sm_clock_mhz_median"] == 1600
    assert summary["throttle_reasons"] == ["GpuIdle", "SwPowerCap"] and summary["duration_s"] == 2.0
    assert power.mean_power_w(samples, 0.0, 2.0) == 200.0
    assert power.mean_power_w(samples, 0.5, 2.0) == 300.0  # only readings inside the window
    assert power.mean_power_w(samples, 0.5, 1.5) is None
    assert power.summarize_samples([])["power_w_mean"] is None


def reading(t_s: float, sm: int, reasons: int = 0) -> PowerSample:
    return PowerSample(t_s, power_w=sm / 4, sm_clock_mhz=sm, mem_clock_mhz=2619, temp_c=sm // 20, reasons_mask=reasons)


def test_case_conditions_give_each_reading_to_the_call_running_then():
    windows = {"a": [(0.000, 0.002), (0.010, 0.012)], "b": [(0.004, 0.006)], "c": [(0.007, 0.009)], "idle": []}
    samples = [reading(0.001, 1000), reading(0.0065, 9999, 0x8),  # the second falls between calls: nobody's
               reading(0.005, 1100, 0x4), reading(0.008, 1200), reading(0.0105, 1300, 0x1),
               reading(0.012, 9999),  # a window's end is exclusive
               reading(0.004, 1400)]  # its start is inclusive
    got = power.case_conditions(samples, windows)
    assert {name: c["n_samples"] for name, c in got.items()} == {"a": 2, "b": 2, "c": 1, "idle": 0}
    assert got["a"]["sm_clock_mhz"] == {"median": 1150, "min": 1000, "max": 1300}
    assert got["b"]["sm_clock_mhz"] == {"median": 1250, "min": 1100, "max": 1400}
    assert got["c"]["power_w"] == {"median": 300.0, "max": 300.0} and got["c"]["temperature_c"] == {"max": 60}
    assert got["a"]["throttle_reasons"] == ["GpuIdle"] and got["b"]["throttle_reasons"] == ["SwPowerCap"]
    assert got["a"]["window_s"] == pytest.approx(0.004) and got["idle"]["window_s"] == 0
    assert got["idle"]["sm_clock_mhz"] == {"median": None, "min": None, "max": None}
    assert got["a"]["mem_clock_mhz"] == {"median": 2619}


def test_case_conditions_from_a_real_cpu_schedule():
    """Readings placed inside the timed calls' windows land on the case whose call it was."""
    from harness.measure.timing import TimingPolicy, time_interleaved

    policy = TimingPolicy(warmup_ms=0.0, min_samples=5, max_samples=5, budget_ms=1e6)
    result = time_interleaved({n: (lambda: time.sleep(0.001)) for n in ("x", "y")}, policy, "cpu")
    clock = {"x": 1500, "y": 1900}
    samples = [reading((start + end) / 2, clock[name]) for name in clock for start, end in result.windows(name)]
    got = power.case_conditions(samples, {name: result.windows(name) for name in clock})
    for name, mhz in clock.items():
        assert got[name]["n_samples"] == 5
        assert got[name]["sm_clock_mhz"]["min"] == got[name]["sm_clock_mhz"]["max"] == mhz


@pytest.mark.parametrize("joules", [{"a": 0.005, "b": 0.012, "c": 0.030}, {"only": 0.7}])
def test_interleaved_energy_recovers_each_cases_energy(monkeypatch, joules):
    from harness.measure import energy
    from harness.measure.timing import TimingPolicy

    counter = {"mj": 0}

    class FakeReader:  # the card's single energy counter, advanced by every call
        def __init__(self, device):
            pass

        def energy_mj(self):
            return counter["mj"]

    def spend(j):
        def fn():
            counter["mj"] += round(j * 1000)
        return fn

    monkeypatch.setattr(energy, "NvmlReader", FakeReader)
    result = energy.measure_energy_interleaved({n: spend(j) for n, j in joules.items()}, "cpu",
                                               TimingPolicy(warmup_ms=0.0), segment_s=0.002, counter_wait_s=0.001)
    for name, j in joules.items():
        assert result[name]["status"] == "ok" and result[name]["schedule"] == "interleaved"
        assert result[name]["joules_per_call"] == pytest.approx(j, rel=1e-6)
        assert result[name]["calls"] > 0 and result[name]["segments"] == 8


def test_interleaved_energy_reads_the_counter_when_it_steps(monkeypatch):
    """A counter that shows the energy only as of its last step (every 30 ms, as NVML's every ~100 ms):
    reading it right after a segment would miss up to 30 ms of the segment's calls; running on until the
    counter steps misses at most one round."""
    from harness.measure import energy
    from harness.measure.timing import TimingPolicy

    period_s, history = 0.030, [(0.0, 0)]  # (host time, true mJ so far)

    class SteppingReader:
        def __init__(self, device):
            pass

        def energy_mj(self):
            last_step = time.perf_counter() // period_s * period_s
            return next(mj for t, mj in reversed(history) if t <= last_step)

    def spend(mj):
        def fn():
            time.sleep(0.0002)
            history.append((time.perf_counter(), history[-1][1] + mj))
        return fn

    monkeypatch.setattr(energy, "NvmlReader", SteppingReader)
    truth = {"a": 20, "b": 40}
    result = energy.measure_energy_interleaved({n: spend(mj) for n, mj in truth.items()}, "cpu",
                                               TimingPolicy(warmup_ms=0.0), segment_s=0.1, counter_wait_s=0.05)
    for name, mj in truth.items():
        assert result[name]["joules_per_call"] == pytest.approx(mj / 1e3, rel=0.05)


def test_interleaved_energy_unavailable_without_nvml(install_nvml):
    from harness.measure import energy
    from harness.measure.timing import TimingPolicy

    install_nvml(None)
    result = energy.measure_energy_interleaved({"a": lambda: None, "b": lambda: None}, "cuda:0", TimingPolicy())
    assert set(result) == {"a", "b"} and all(r["status"] == "unavailable" for r in result.values())
    install_nvml(fake_pynvml(energy=False))
    result = energy.measure_energy_interleaved({"a": lambda: None}, "cuda:0", TimingPolicy())
    assert "energy counter" in result["a"]["reason"]


def test_ceilings_need_cuda():
    from harness.measure.ceilings import measure_ceilings

    ceilings, reason = measure_ceilings("cpu")
    assert ceilings is None and "CUDA" in reason


@pytest.mark.gpu
def test_ceilings_on_a_gpu():
    from harness.measure.ceilings import measure_ceilings
    from harness.measure.timing import TimingPolicy

    policy = TimingPolicy(warmup_ms=20.0, min_samples=3, max_samples=3, budget_ms=100.0, rounds=3)
    ceilings, reason = measure_ceilings("cuda", policy, gemm_n=2048, copy_bytes=1 << 26)
    assert reason is None and ceilings["gemm_tflops"] > 1 and ceilings["copy_gbps"] > 10
    assert "median of 3 calls" in ceilings["how"]


# ---------------------------------------------------------------- ncu traffic

NCU_CSV = textwrap.dedent('''\
    ==PROF== Connected to process 4242 (/usr/bin/python3.12)
    ==PROF== Profiling "cudnn_sdpa_fwd" - 0: 0%....50%....100% - 1 pass
    ==WARNING== Backing up device memory in system memory. Kernel replay might be slow.
    "ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","1,048,576"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","Kbyte","512.5"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","12.5"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Command line profiler metrics","lts__t_bytes.sum","Mbyte","3.25"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","71.3"
    "0","4242","python3.12","127.0.0.1","void cutlass::Kernel2<Params, 128>(T1)","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","Launch Statistics","launch__registers_per_thread","register/thread","168"
    "1","4242","python3.12","127.0.0.1","elementwise_kernel","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Gbyte","0.002"
    "1","4242","python3.12","127.0.0.1","elementwise_kernel","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","2,000,000"
    "1","4242","python3.12","127.0.0.1","elementwise_kernel","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","7,500"
    "1","4242","python3.12","127.0.0.1","elementwise_kernel","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","lts__t_bytes.sum","byte","4,000,000"
    ==PROF== Disconnected from process 4242
    ''')
EXPECTED_READ = 1_048_576 + 2_000_000
EXPECTED_WRITE = 512_500 + 2_000_000
EXPECTED_NS = 12_500 + 7_500


def test_parse_ncu_csv_launches():
    launches = traffic.parse_ncu_csv(NCU_CSV)
    assert [launch["id"] for launch in launches] == [0, 1]
    assert launches[0]["kernel"] == "void cutlass::Kernel2<Params, 128>(T1)"  # quoted comma kept
    # the byte metrics and the SM counters asked for are kept, any other metric dropped
    assert set(launches[0]["metrics"]) == {*traffic.NCU_METRICS, "sm__throughput.avg.pct_of_peak_sustained_elapsed"}
    assert launches[0]["metrics"]["sm__throughput.avg.pct_of_peak_sustained_elapsed"] == 71.3
    assert launches[0]["metrics"]["lts__t_bytes.sum"] == pytest.approx(3.25e6)
    assert launches[1]["metrics"]["gpu__time_duration.sum"] == 7500.0


def test_summarize_launches_sums_and_converts():
    summary = traffic.summarize_launches(traffic.parse_ncu_csv(NCU_CSV))
    assert summary["launches"] == 2
    assert summary["kernels"] == ["void cutlass::Kernel2<Params, 128>(T1)", "elementwise_kernel"]
    assert summary["dram_read_bytes"] == EXPECTED_READ and summary["dram_write_bytes"] == EXPECTED_WRITE
    assert summary["dram_bytes"] == EXPECTED_READ + EXPECTED_WRITE
    assert summary["l2_bytes"] == 7_250_000
    assert summary["kernel_ms"] == pytest.approx(EXPECTED_NS / 1e6)
    assert summary["achieved_dram_gbps"] == pytest.approx((EXPECTED_READ + EXPECTED_WRITE) / EXPECTED_NS)
    assert "not a latency" in summary["kernel_ms_note"]


def test_missing_or_na_metric_gives_none_not_a_guess():
    text = NCU_CSV.replace('"lts__t_bytes.sum","byte","4,000,000"', '"lts__t_bytes.sum","byte","n/a"')
    text = "\n".join(line for line in text.splitlines() if not ('"1"' in line and "dram__bytes_write" in line))
    summary = traffic.summarize_launches(traffic.parse_ncu_csv(text))
    assert summary["l2_bytes"] is None and summary["dram_write_bytes"] is None and summary["dram_bytes"] is None
    assert summary["achieved_dram_gbps"] is None and summary["dram_read_bytes"] == EXPECTED_READ


def test_parse_without_header_or_rows():
    assert traffic.parse_ncu_csv("==PROF== No kernels were profiled.\n") == []
    summary = traffic.summarize_launches([])
    assert summary["launches"] == 0 and summary["dram_bytes"] is None


@pytest.mark.parametrize("bad,match", [('"Mbit","3"', "unknown ncu unit"), ])
def test_parse_rejects_unknown_unit(bad, match):
    text = NCU_CSV.replace('"Mbyte","3.25"', bad)
    with pytest.raises(ValueError, match=match):
        traffic.parse_ncu_csv(text)


def test_parse_rejects_unexpected_layout():
    with pytest.raises(ValueError, match="Metric Value"):
        traffic.parse_ncu_csv('"ID","Kernel Name","Metric Name","Metric Unit"\n"0","k","dram__bytes_read.sum","byte"\n')


@pytest.mark.parametrize("output,expected", [
    ("==PROF== Connected\n==ERROR== ERR_NVGPUCTRPERM - The user does not have permission\n", "ERR_NVGPUCTRPERM"),
    ("==ERROR== Failed to profile kernel\n==ERROR== Unknown error\n", "Failed to profile kernel | ==ERROR== Unknown"),
    ("Traceback ...\nRuntimeError: no CUDA\n", "RuntimeError: no CUDA"),
    ("", "ncu printed nothing"),
])
def test_failure_reason(output, expected):
    assert expected in traffic.failure_reason(output)


@pytest.mark.parametrize("regex", [None, "cudnn|flash"])
def test_ncu_command(tmp_path, regex):
    command = traffic.ncu_command("/opt/ncu", tmp_path / "r.csv", ["python", "-m", "x"], regex)
    joined = " ".join(command)
    assert command[0] == "/opt/ncu" and command[-3:] == ["python", "-m", "x"]
    assert "--clock-control none" in joined and "--target-processes all" in joined
    assert f"--nvtx --nvtx-include {_ncu_target.MEASURED_RANGE}/" in joined
    assert "dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,gpu__time_duration.sum" in joined
    assert f"--log-file {tmp_path / 'r.csv'}" in joined
    assert ("--kernel-name regex:cudnn|flash" in joined) == (regex is not None)


FAKE_NCU = '''#!{python}
"""A stand-in for ncu: records its argv, writes the CSV fixture to --log-file, or fails like ncu."""
import json, pathlib, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler\\nVersion 2025.3.0.0 (build 1)")
    raise SystemExit(0)
if args == ["--query-metrics"]:  # no listing: every counter is asked for
    raise SystemExit(1)
pathlib.Path({argv_file!r}).write_text(json.dumps(args))
if {fail!r}:
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    raise SystemExit(1)
pathlib.Path(args[args.index("--log-file") + 1]).write_text({csv!r})
'''


@pytest.fixture
def fake_ncu(tmp_path, monkeypatch):
    def install(fail=False):
        script = tmp_path / "ncu"
        argv_file = tmp_path / "argv.json"
        script.write_text(FAKE_NCU.format(python=sys.executable, argv_file=str(argv_file), fail=fail, csv=NCU_CSV))
        script.chmod(0o755)
        monkeypatch.setattr(traffic, "find_ncu", lambda: str(script))
        return argv_file
    probe = traffic.ncu_available  # tests may replace it; clear the real probe's memo after them
    yield install
    probe.cache_clear()
    traffic.metric_listing.cache_clear()


CASE = {"method": {"method": "sdpa_cudnn"}, "problem": Problem(height=8, width=8, text_tokens=16).to_dict()}


def test_measure_traffic_end_to_end_with_fake_ncu(fake_ncu, tmp_path, monkeypatch):
    argv_file = fake_ncu()
    monkeypatch.setattr(traffic, "ncu_available", lambda: Availability(True, "fake"))
    result = traffic.measure_traffic(CASE, tmp_path / "out", kernel_regex="cutlass")
    assert result["status"] == "ok", result
    assert result["dram_read_bytes"] == EXPECTED_READ and result["launches"] == 2
    assert result["kernel_regex"] == "cutlass"
    assert result["csv_path"].startswith(str(tmp_path / "out")) and "ncu-sdpa_cudnn-128x128-" in result["csv_path"]
    argv = json.loads(argv_file.read_text())
    target = argv[argv.index("--kernel-name") + 2:]
    assert target[1:3] == ["-m", "harness.core.ncu_target"]
    assert _ncu_target.parse_spec(target[target.index("--spec") + 1]) == CASE


def test_traffic_files_named_after_the_case(fake_ncu, tmp_path, monkeypatch):
    fake_ncu()
    monkeypatch.setattr(traffic, "ncu_available", lambda: Availability(True, "fake"))
    result = traffic.measure_traffic({**CASE, "case": "128x128/sdpa_cudnn/layer0", "group": 1}, tmp_path)
    assert result["status"] == "ok" and "ncu-128x128_sdpa_cudnn_layer0-" in result["csv_path"]


def test_measure_traffic_reports_counter_permission(fake_ncu, tmp_path, monkeypatch):
    fake_ncu(fail=True)
    monkeypatch.setattr(traffic, "ncu_available", lambda: Availability(True, "fake"))
    result = traffic.measure_traffic(CASE, tmp_path)
    assert result["status"] == "failed" and "ERR_NVGPUCTRPERM" in result["reason"]
    assert "ERR_NVGPUCTRPERM" in open(result["log_path"]).read()


def test_ncu_probe_without_cuda_says_so(fake_ncu, monkeypatch):
    fake_ncu()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    traffic.ncu_available.cache_clear()
    avail = traffic.ncu_available()
    assert not avail and "Version 2025.3" in avail.reason and "no CUDA device" in avail.reason


def test_ncu_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(traffic, "find_ncu", lambda: None)
    traffic.ncu_available.cache_clear()
    try:
        assert "ncu not found" in traffic.ncu_available().reason
        assert traffic.measure_traffic(CASE, tmp_path)["status"] == "unavailable"
    finally:
        traffic.ncu_available.cache_clear()


@pytest.mark.parametrize("bad", [{"method": "x"}, {"problem": {}}, "sdpa_cudnn"])
def test_measure_traffic_rejects_bad_spec(bad, tmp_path):
    with pytest.raises(ValueError, match="method"):
        traffic.measure_traffic(bad, tmp_path)


@pytest.mark.parametrize("problem", [Problem(height=8, width=12), Problem(4, 6, text_tokens=0, heads=2, dtype="float16",
                                                                        layer=3)])
def test_ncu_target_rebuilds_problem(problem):
    assert _ncu_target.problem_from_dict(json.loads(json.dumps(problem.to_dict()))) == problem


@pytest.mark.parametrize("text", ['{"method": "x"}', '{"method": "x", "problem": {}, "extra": 1}', "[1]"])
def test_ncu_target_rejects_bad_spec(text):
    with pytest.raises(ValueError, match="exactly the keys"):
        _ncu_target.parse_spec(text)


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_on_cpu():
    env = envinfo.fingerprint("cpu")
    json.dumps(env)  # results.json must be able to hold it
    for key in ("device", *envinfo.GPU_KEYS, "driver_version", "cuda_runtime", "cudnn_version", "versions", "nvml",
                "torch_settings", "host", "git", "env_vars"):
        assert key in env, key
    assert env["device"] == "cpu" and env["gpu_name"] is None
    assert env["nvml"]["status"] == "unavailable"
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert set(envinfo.PACKAGES) <= set(env["versions"]) and "python" in env["versions"]
    assert set(envinfo.ENV_VARS) == set(env["env_vars"])
    assert env["git"]["commit"] is not None or env["git"]["reason"]


def test_missing_package_version_is_none(monkeypatch):
    monkeypatch.setitem(envinfo.PACKAGES, "not_a_package", "surely-not-installed-xyz")
    assert envinfo.package_versions()["not_a_package"] is None


def test_git_missing(monkeypatch):
    monkeypatch.setattr(envinfo.shutil, "which", lambda name: None)
    assert envinfo.git_state() == {"commit": None, "dirty": None, "reason": "git is not installed"}


def test_git_outside_a_repository(tmp_path):
    if envinfo.shutil.which("git") is None:
        pytest.skip("git is not installed")
    state = envinfo.git_state(tmp_path)
    assert state["commit"] is None and state["reason"]


def test_gpu_selfcheck_runs_without_a_gpu(tmp_path, monkeypatch, capsys):
    from harness.apps import selfcheck as gpu_selfcheck

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_selfcheck.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "selfcheck.json").read_text())
    assert set(report) == set(gpu_selfcheck.CHECKS)
    assert report["fingerprint"]["status"] == "ok" and report["fingerprint"]["device"] == "cpu"
    assert all(report[name]["status"] == "unavailable" for name in ("timing", "graph_fallback", "nvml", "ncu"))
    assert "fingerprint" in capsys.readouterr().out
