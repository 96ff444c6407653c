"""Turning numbers from results into short display strings; missing values become an em dash.

Every formatter accepts None, NaN and non-numbers and returns ``MISSING`` for them, so a table never shows
"nan" or a made-up zero. Quantities with a unit keep three significant digits (85.0 GB, 1.77 ms, 706 W),
latencies four (they are compared to the third digit).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

MISSING = "—"
NOT_RECORDED = "not recorded"
_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")


def number_or_none(value) -> float | None:
    """``value`` as a float, or None for None, NaN, booleans and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, trailing zeros kept: 85 -> "85.0", 0.0412 -> "0.0412"."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(float(f"{value:.{digits - 1}e}"))))  # of the rounded value
    if digits <= exponent < 6:  # 1979.7 -> "1,980"
        return f"{round(value, digits - 1 - exponent):,.0f}"
    if exponent >= 6 or exponent < -4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{max(0, digits - 1 - exponent)}f}"


def _guarded(render: Callable[[float], str]) -> Callable[[object], str]:
    def format_value(value) -> str:
        number = number_or_none(value)
        if number is None:
            return MISSING
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        return render(number)

    format_value.__name__ = render.__name__
    format_value.__doc__ = render.__doc__
    return format_value


@_guarded
def fmt_ms(value: float) -> str:
    """Milliseconds with four significant digits: 0.4351, 5.630, 164.0; whole from 1000 on: 12,362."""
    return f"{value:,.0f}" if abs(value) >= 1000 else significant(value, 4)


@_guarded
def fmt_duration(value: float) -> str:
    """A duration given in ms, with its unit: 63.5 ms, 12.4 s."""
    return f"{significant(value / 1e3)} s" if abs(value) >= 1000 else f"{significant(value)} ms"


@_guarded
def fmt_ratio(value: float) -> str:
    """A ratio: 2.30×, 20.4×, 3,910×."""
    return f"{value:.2f}×" if abs(value) < 10 else f"{significant(value)}×"


@_guarded
def fmt_pct(value: float) -> str:
    """A fraction as a percentage: 0.349 -> 34.9 %."""
    return f"{100 * value:.1f} %"


@_guarded
def fmt_signed_pct(value: float) -> str:
    """A relative change as a signed percentage: 0.031 -> +3.1 %."""
    return f"{100 * value:+.1f} %"


@_guarded
def fmt_float(value: float) -> str:
    """A plain number with three significant digits."""
    return significant(value)


@_guarded
def fmt_sci(value: float) -> str:
    """Small errors and p-values: 3.1e-03."""
    return f"{value:.2e}" if value else "0"


@_guarded
def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


@_guarded
def fmt_bytes(value: float) -> str:
    """Decimal units, as ncu and datasheets use, three significant digits: 415 MB, 85.0 GB."""
    scaled, unit = value, _BYTE_UNITS[0]
    for unit in _BYTE_UNITS:
        if abs(scaled) < 999.5 or unit == _BYTE_UNITS[-1]:
            break
        scaled /= 1000
    return f"{significant(scaled) if unit != 'B' else f'{scaled:.0f}'} {unit}"


def _unit(suffix: str, doc: str, whole: bool = False) -> Callable[[object], str]:
    """A formatter of values with a unit: three significant digits, or ``whole`` numbers (clocks, degrees)."""
    def render(value: float) -> str:
        return f"{value:.0f} {suffix}" if whole else f"{significant(value)} {suffix}"

    render.__name__, render.__doc__ = f"fmt_{suffix}", doc
    return _guarded(render)


fmt_watts = _unit("W", "Watts: 706 W.")
fmt_joules = _unit("J", "Joules: 1.31 J.")
fmt_tflops = _unit("TFLOP/s", "Throughput: 446 TFLOP/s.")
fmt_gbps = _unit("GB/s", "Bandwidth: 965 GB/s.")
fmt_gflop_per_j = _unit("GFLOP/J", "Work per energy (= TFLOP/s per kW).")

fmt_mhz_int = _unit("MHz", "A clock in whole MHz: 1815 MHz.", whole=True)
fmt_celsius = _unit("°C", "A temperature in whole degrees: 62 °C.", whole=True)


def fmt_interval(low, high, render: Callable[[object], str] = fmt_ms) -> str:
    """``[lo, hi]``, or MISSING when either end is missing."""
    if number_or_none(low) is None or number_or_none(high) is None:
        return MISSING
    return f"[{render(low)}, {render(high)}]"


def fmt_text(value) -> str:
    """Free text from results (reasons, names); None and NaN become MISSING, floats get the float format."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_float(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_text(item) for item in value) or MISSING
    if isinstance(value, dict):
        return "; ".join(f"{key}: {fmt_text(item)}" for key, item in value.items()) or MISSING
    return str(value)


def fmt_passed(value) -> str:
    return {True: "yes", False: "NO"}.get(value, "not checked") if isinstance(value, bool) else "not checked"
