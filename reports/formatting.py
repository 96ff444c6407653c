"""Turning numbers from results into short display strings; missing values become an em dash.

Every formatter accepts None, NaN and non-numbers and returns ``MISSING`` for them, so a table never shows
"nan" or a made-up zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

MISSING = "—"
_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")


def number_or_none(value) -> float | None:
    """``value`` as a float, or None for None, NaN, booleans and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _guarded(render: Callable[[float], str]) -> Callable[[object], str]:
    def format_value(value) -> str:
        number = number_or_none(value)
        if number is None:
            return MISSING
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        return render(number)

    format_value.__name__ = render.__name__
    return format_value


@_guarded
def fmt_ms(value: float) -> str:
    """Milliseconds with four significant digits: 0.4351, 5.630, 164.0."""
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"


@_guarded
def fmt_ratio(value: float) -> str:
    return f"{value:.2f}×"


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
    return f"{value:.4g}"


@_guarded
def fmt_sci(value: float) -> str:
    """Small errors and p-values: 3.1e-03."""
    return f"{value:.2e}" if value else "0"


@_guarded
def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


@_guarded
def fmt_bytes(value: float) -> str:
    """Decimal units, as ncu and datasheets use: 415.2 MB."""
    scaled, unit = value, _BYTE_UNITS[0]
    for unit in _BYTE_UNITS:
        if abs(scaled) < 1000 or unit == _BYTE_UNITS[-1]:
            break
        scaled /= 1000
    return f"{scaled:.4g} {unit}"


def fmt_interval(low, high, render: Callable[[object], str] = fmt_ms) -> str:
    """``[lo, hi]``, or MISSING when either end is missing."""
    if number_or_none(low) is None or number_or_none(high) is None:
        return MISSING
    return f"[{render(low)}, {render(high)}]"


def fmt_text(value) -> str:
    """Free text from results (reasons, names); None and NaN become MISSING, floats get the float format."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return fmt_float(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_text(item) for item in value) or MISSING
    if isinstance(value, dict):
        return "; ".join(f"{key}: {fmt_text(item)}" for key, item in value.items()) or MISSING
    return str(value)


def fmt_passed(value) -> str:
    return {True: "yes", False: "NO"}.get(value, "not checked") if isinstance(value, bool) else "not checked"
