"""GPU power, energy, clocks, temperature and clock-event (throttle) reasons through NVML, read only.

NVML comes from the ``nvidia-ml-py`` package (module ``pynvml``), probed once: without it, without a
driver, or on a CPU device every entry point answers ``{"status": "unavailable", "reason": ...}`` instead
of raising. A torch device is mapped to its NVML handle through the GPU's UUID, never by index (NVML
indices ignore ``CUDA_VISIBLE_DEVICES``). Nothing here changes clocks, power limits or persistence mode.

- `PowerSampler`: a background thread polling instant power, SM/memory clocks, temperature and
  clock-event reasons every ~20 ms while a block of work runs.
- `measure_energy`: joules per call from the driver's energy counter over a window of >= 1 s of back to
  back calls (the counter and the power reading update only every ~20-100 ms, so short windows lie).
- `case_conditions`: the conditions each case ran under when cases are timed interleaved: every sampler
  reading is given to the case whose call was running on the GPU at that instant (its time windows from
  `harness.measure.timing.TimingResult.windows`), and summarized per case. Readings taken between calls
  (an L2 flush, a launch gap) belong to no case. NVML's instant power is itself averaged over tens of
  ms, so with calls of a few ms a case's power is mostly that of the mix; its SM clock is its own.
- `snapshot`: one reading of limits, clocks, temperature and reasons (per case and in the environment).
"""

from __future__ import annotations

import functools
import math
import statistics
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from baselines.base import Availability
from harness.measure.timing import synchronize

# NVML clock-event reason bits (nvmlClocksEventReason*; the older name was "throttle reasons").
CLOCK_EVENT_REASONS = {
    0x1: "GpuIdle",
    0x2: "ApplicationsClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
}
# Reasons that mean the card ran below the clocks it would otherwise have used: timings taken under
# them are flagged ("throttled") rather than silently averaged.
CAPPING_REASONS = frozenset({"SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown",
                             "HwPowerBrakeSlowdown"})
# c_nvmlFieldValue_t.valueType -> the member of its value union that holds the number.
_FIELD_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
INSTANT_POWER_SOURCE = "NVML_FI_DEV_POWER_INSTANT"
AVERAGE_POWER_SOURCE = "nvmlDeviceGetPowerUsage (1 s average on Ampere and newer)"


class NvmlUnavailable(RuntimeError):
    """NVML cannot be read for this device; the message is the reason."""


def unavailable(reason: str) -> dict:
    """The result of a measurement that cannot be taken here (shared by the measurement modules)."""
    return {"status": "unavailable", "reason": reason}


@functools.cache
def nvml_available() -> Availability:
    """Whether NVML can be initialised and sees a GPU (probed once; ``nvml_available.cache_clear()``
    probes again)."""
    try:
        import pynvml
    except ImportError:
        return Availability(False, "nvidia-ml-py (module pynvml) is not installed")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as exc:
        return Availability(False, f"NVML could not be initialised: {exc}")
    if count == 0:
        return Availability(False, "NVML sees no GPU")
    return Availability(True, f"NVML, driver {driver}, {count} GPU(s)")


def _nvml():
    avail = nvml_available()
    if not avail:
        raise NvmlUnavailable(avail.reason)
    import pynvml

    return pynvml


def driver_version() -> str | None:
    """The NVIDIA driver version, or None without NVML."""
    try:
        return _nvml().nvmlSystemGetDriverVersion()
    except NvmlUnavailable:
        return None


def nvml_uuid(device: torch.device) -> str:
    """NVML's UUID string of a torch CUDA device (torch prints it without the ``GPU-`` prefix)."""
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class PowerSample(NamedTuple):
    t_s: float  # time.perf_counter()
    power_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temp_c: int | None
    reasons_mask: int | None


class NvmlReader:
    """NVML readings of one device; every reading that fails gives None (and counts as an error)."""

    def __init__(self, device: torch.device | str):
        device = torch.device(device)
        if device.type != "cuda":
            raise NvmlUnavailable(f"{device} is not a CUDA device")
        self.nvml = _nvml()
        try:
            self.handle = self.nvml.nvmlDeviceGetHandleByUUID(nvml_uuid(device))
        except Exception as exc:  # torch without CUDA, an unknown UUID, a MIG slice, ...
            raise NvmlUnavailable(f"no NVML handle for {device}: {type(exc).__name__}: {exc}") from exc
        self.errors = 0
        self.power_source = INSTANT_POWER_SOURCE if self._instant_power_w() is not None else AVERAGE_POWER_SOURCE
        self._reasons = (getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons)  # older bindings' name

    def read(self, getter: Callable, *args):
        try:
            return getter(self.handle, *args)
        except self.nvml.NVMLError:
            self.errors += 1
            return None

    def _instant_power_w(self) -> float | None:
        field = getattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is None:
            return None
        try:
            (value,) = self.nvml.nvmlDeviceGetFieldValues(self.handle, [field])
        except self.nvml.NVMLError:
            return None
        if value.nvmlReturn != self.nvml.NVML_SUCCESS:
            return None
        return getattr(value.value, _FIELD_VALUE_MEMBERS[value.valueType]) / 1000.0

    def power_w(self) -> float | None:
        if self.power_source == INSTANT_POWER_SOURCE:
            watts = self._instant_power_w()
            if watts is None:
                self.errors += 1
            return watts
        milliwatts = self.read(self.nvml.nvmlDeviceGetPowerUsage)
        return None if milliwatts is None else milliwatts / 1000.0

    def energy_mj(self) -> int | None:
        return self.read(self.nvml.nvmlDeviceGetTotalEnergyConsumption)

    def poll(self) -> PowerSample:
        nv = self.nvml
        return PowerSample(
            t_s=time.perf_counter(),
            power_w=self.power_w(),
            sm_clock_mhz=self.read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            mem_clock_mhz=self.read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
            temp_c=self.read(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
            reasons_mask=self.read(self._reasons),
        )


def decode_reasons(mask: int | None) -> list[str]:
    """Names of the set clock-event reason bits; unknown bits as ``Unknown0x...``."""
    if not mask:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([f"Unknown{rest:#x}"] if rest else [])


def _values(samples: list[PowerSample], field: str) -> list:
    return [v for v in (getattr(s, field) for s in samples) if v is not None]


def _median(values: list) -> float | None:
    return statistics.median(values) if values else None


def summarize_samples(samples: list[PowerSample]) -> dict:
    """Mean/max power, min/median SM clock, median memory clock, max temperature, reasons seen."""
    power, sm, mem, temp = (_values(samples, f) for f in ("power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c"))
    reasons = sorted({name for mask in _values(samples, "reasons_mask") for name in decode_reasons(mask)})
    return {
        "n_samples": len(samples),
        "duration_s": samples[-1].t_s - samples[0].t_s if samples else 0.0,
        "power_w_mean": statistics.fmean(power) if power else None,
        "power_w_max": max(power, default=None),
        "sm_clock_mhz_min": min(sm, default=None),
        "sm_clock_mhz_median": _median(sm),
        "mem_clock_mhz_median": _median(mem),
        "temp_c_max": max(temp, default=None),
        "throttle_reasons": reasons,
        "throttled": bool(CAPPING_REASONS.intersection(reasons)),
    }


def mean_power_w(samples: list[PowerSample], start_s: float, end_s: float) -> float | None:
    """Mean of the power readings taken within [start_s, end_s] (polls are evenly spaced in time)."""
    power = [s.power_w for s in samples if start_s <= s.t_s <= end_s and s.power_w is not None]
    return statistics.fmean(power) if power else None


def _attribute(samples: list[PowerSample], windows: dict[str, list[tuple[float, float]]]) -> dict[str, list]:
    """``{case: [readings taken inside one of its [start, end) windows]}`` (windows do not overlap)."""
    spans = sorted((start, end, name) for name, spans in windows.items() for start, end in spans)
    starts = [start for start, _, _ in spans]
    owned: dict[str, list[PowerSample]] = {name: [] for name in windows}
    for sample, i in zip(samples, np.searchsorted(starts, [s.t_s for s in samples], side="right") - 1):
        if i >= 0 and sample.t_s < spans[i][1]:
            owned[spans[i][2]].append(sample)
    return owned


def conditions(samples: list[PowerSample], window_s: float) -> dict:
    """The per-case ``conditions`` of results.json from the readings taken during the case's calls
    (``window_s``: the total time those calls ran); ``None`` where no reading of a kind was taken."""
    power, sm, mem, temp = (_values(samples, f) for f in ("power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c"))
    return {"sm_clock_mhz": {"median": _median(sm), "min": min(sm, default=None), "max": max(sm, default=None)},
            "mem_clock_mhz": {"median": _median(mem)},
            "power_w": {"median": _median(power), "max": max(power, default=None)},
            "temperature_c": {"max": max(temp, default=None)},
            "throttle_reasons": sorted({n for mask in _values(samples, "reasons_mask") for n in decode_reasons(mask)}),
            "n_samples": len(samples), "window_s": window_s}


def case_conditions(samples: list[PowerSample], windows: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    """``{case: conditions}``: each reading attributed to the case whose call ran at that instant
    (``windows[case]``: its calls' ``[start, end)`` on the sampler's clock, ``time.perf_counter``)."""
    owned = _attribute(samples, windows)
    return {name: conditions(owned[name], sum(end - start for start, end in spans))
            for name, spans in windows.items()}


class PowerSampler:
    """``with PowerSampler(device) as sampler: ...`` then ``sampler.summary()``, or
    ``case_conditions(sampler.samples, ...)`` for interleaved cases.

    A daemon thread polls every ``interval_s`` (plus once at entry and once at exit). Without NVML the
    block still runs and `summary` says why nothing was sampled.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.02):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.samples: list[PowerSample] = []
        self.unavailable_reason: str | None = None
        self._reader: NvmlReader | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PowerSampler:
        try:
            self._reader = NvmlReader(self.device)
        except NvmlUnavailable as exc:
            self.unavailable_reason = str(exc)
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        self.samples.append(self._reader.poll())
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._reader.poll())
        self.samples.append(self._reader.poll())

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def summary(self) -> dict:
        if self.unavailable_reason is not None:
            return unavailable(self.unavailable_reason)
        return {"status": "ok", "power_source": self._reader.power_source, "read_errors": self._reader.errors,
                **summarize_samples(self.samples)}


def snapshot(device: torch.device | str) -> dict:
    """Enforced power limit, current power, clocks (and their maxima), temperature, P-state and
    clock-event reasons right now."""
    try:
        reader = NvmlReader(device)
    except NvmlUnavailable as exc:
        return unavailable(str(exc))
    nv = reader.nvml
    sample = reader.poll()
    limit_mw = reader.read(nv.nvmlDeviceGetEnforcedPowerLimit)
    return {
        "status": "ok",
        "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
        "power_w": sample.power_w,
        "power_source": reader.power_source,
        "sm_clock_mhz": sample.sm_clock_mhz,
        "mem_clock_mhz": sample.mem_clock_mhz,
        "max_sm_clock_mhz": reader.read(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_SM),
        "max_mem_clock_mhz": reader.read(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM),
        "temp_c": sample.temp_c,
        "performance_state": reader.read(nv.nvmlDeviceGetPerformanceState),
        "throttle_reasons": decode_reasons(sample.reasons_mask),
    }


def measure_energy(fn: Callable[[], object], device: torch.device | str, min_window_s: float = 1.0) -> dict:
    """Joules per call of ``fn`` from the energy counter over >= ``min_window_s`` of back to back calls
    (synchronized before and after), with the sampler's power/clock/reason summary of the same window.

    Where the counter cannot be read, falls back to mean sampled power x window (``energy_source`` says
    which); ``sampled_joules_per_call`` is always there as a cross-check.
    """
    if min_window_s <= 0:
        raise ValueError(f"min_window_s must be positive, got {min_window_s}")
    device = torch.device(device)
    try:
        reader = NvmlReader(device)
    except NvmlUnavailable as exc:
        return unavailable(str(exc))
    # One timed call sizes the first batch; the loop tops up until the window is long enough.
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    per_call_s = max(time.perf_counter() - start, 1e-7)
    calls, window_s = 0, 0.0
    with PowerSampler(device) as sampler:
        energy_start_mj = reader.energy_mj()
        start = time.perf_counter()
        while window_s < min_window_s:
            batch = max(1, math.ceil((min_window_s - window_s) / per_call_s * 1.05))
            for _ in range(batch):
                fn()
            synchronize(device)
            calls += batch
            window_s = time.perf_counter() - start
            per_call_s = window_s / calls
        energy_end_mj = reader.energy_mj()
    sampled_watts = mean_power_w(sampler.samples, start, start + window_s)
    sampled_j = None if sampled_watts is None else sampled_watts * window_s  # a cross-check of the counter
    if energy_start_mj is not None and energy_end_mj is not None:
        joules, source = (energy_end_mj - energy_start_mj) / 1000.0, "nvmlDeviceGetTotalEnergyConsumption"
    elif sampled_j is not None:
        joules, source = sampled_j, "mean sampled power x window"
    else:
        return unavailable("neither the energy counter nor power samples could be read")
    return {
        **sampler.summary(),
        "joules_per_call": joules / calls,
        "mean_watts": joules / window_s,
        "calls": calls,
        "window_s": window_s,
        "energy_source": source,
        "sampled_joules_per_call": None if sampled_j is None else sampled_j / calls,
    }
