"""The one validator kit: checks that normalize a value or raise `Invalid` saying what was expected.

Used by the registry's family parameters, the suite loader (`harness.core.suite`, which adds the line in
the TOML file) and the e2e settings. It lives in the lowest layer that validates input so all three can
use it. A check is ``check(value) -> normalized value``::

    integer(1)(4) == 4; integer(1)(0) -> Invalid("expected an integer >= 1, got 0")
    list_of(choice(("a", "b")), unique=True)(["a"]) == ("a",)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

Check = Callable[[object], object]


class Invalid(ValueError):
    """A bad value; ``needles`` are values whose text locates it in a file more precisely than its key."""

    def __init__(self, message: str, *needles):
        super().__init__(message)
        self.needles = needles


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int) -> Check:
    def check(value):
        if not _is_int(value) or value < minimum:
            raise Invalid(f"expected an integer >= {minimum}, got {value!r}")
        return value
    return check


def odd_integer(minimum: int) -> Check:
    def check(value):
        if not _is_int(value) or value < minimum or value % 2 == 0:
            raise Invalid(f"expected an odd integer >= {minimum}, got {value!r}")
        return value
    return check


def number(minimum: float, strict: bool = False, below: float | None = None) -> Check:
    """A finite number >= ``minimum`` (> when ``strict``), and < ``below`` when given; returned as float."""
    def check(value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (strict and value == minimum) or (below is not None and value >= below):
            bound = f"{'>' if strict else '>='} {minimum:g}" + (f" and < {below:g}" if below is not None else "")
            raise Invalid(f"expected a number {bound}, got {value!r}")
        return float(value)
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {value!r}")
    return value


def text(value):
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {value!r}")
    return value


def optional(check: Check) -> Check:
    """``None`` or what ``check`` accepts."""
    return lambda value: None if value is None else check(value)


def choice(choices: Iterable) -> Check:
    choices = tuple(choices)

    def check(value):
        if value not in choices:
            raise Invalid(f"{value!r} is not one of {', '.join(map(str, choices))}", value)
        return value
    return check


def list_of(item: Check, non_empty: bool = False, unique: bool = False) -> Check:
    """A list (or tuple) of valid items, returned as a tuple."""
    def check(value):
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"expected a list, got {value!r}")
        if non_empty and not value:
            raise Invalid("expected a non-empty list")
        items = tuple(item(v) for v in value)
        if unique and len(set(items)) != len(items):
            raise Invalid(f"duplicate entries in {list(value)!r}")
        return items
    return check


def table(value):
    """Any table (dict): its keys are someone else's to check."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a table, got {value!r}")
    return value


def int_pair(value) -> tuple[int, int]:
    """``8`` -> (8, 8); ``[8, 16]`` (JSON) or ``(8, 16)`` -> (8, 16); positive integers."""
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise Invalid(f"expected an integer or a pair of integers, got {value!r}")
    return integer(1)(value[0]), integer(1)(value[1])
