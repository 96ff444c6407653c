"""The registry of attention methods: families registered with a decorator, resolved from names or specs.

A *family* is one implementation with named parameters (``sta`` with ``tile`` and ``window``); a *method* is
a family with every parameter fixed, and its `Method.name` encodes them (``sta_tile8x8_win3x3``). Families
register themselves with `register_family` (tritonbench style); the modules holding them are imported on
first use, so importing the registry stays cheap and a module whose optional dependency is missing still
registers its families (they report themselves unavailable instead).

    resolve("hilberta")                              # family defaults -> hilberta_t16
    resolve({"method": "sta", "window": [5, 5]})     # params as in a suite file or results row
    resolve("hilberta_t16")                          # a name resolve() has produced (or a default's name)

Availability is probed once per (method, device) and cached with a readable reason. `MethodUnavailable`
is what a build raises when a backend refuses one particular problem (say, a head dim it does not
support): the harness records such a case as "unavailable", never as a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from baselines import validate
from baselines.base import Availability, Method, PreparedAttention
from baselines.matched_density import matched_density  # noqa: F401  (re-exported: part of the registry contract)

# Modules that hold registered families, imported on first use of the registry.
FAMILY_MODULES = (
    "baselines.dense",
    "baselines.hilberta_methods",
    "baselines.sliding_tile",
    "baselines.neighborhood",
    "baselines.fa4",
    "baselines.fa4_split",
)
CATEGORIES = ("dense", "hilberta", "sliding_tile", "neighborhood", "control")


class MethodUnavailable(RuntimeError):
    """A method's backend refuses this problem or device; the reason is the message."""


@dataclass(frozen=True)
class Param:
    """One parameter of a family: its default, what it accepts, and a check that normalizes a value.

    ``check`` returns the normalized value (lists from JSON become tuples, say) or raises ValueError
    with the reason; ``accepts`` describes the valid values for error messages and listings.
    """

    default: object
    accepts: str
    check: Callable[[object], object]


@dataclass(frozen=True)
class Family:
    """A registered implementation and everything needed to turn parameters into a `Method`."""

    name: str  # registry key, e.g. "sta"
    category: str  # Method.family, one of CATEGORIES
    params: Mapping[str, Param]
    build: Callable[..., PreparedAttention]  # build(problem, device, **params)
    probe: Callable[..., Availability]  # probe(device, **params), called once per (method, device)
    method_name: Callable[[Mapping], str]
    label: Callable[[Mapping], str]
    dense_reference: bool

    def defaults(self) -> dict:
        return {key: param.default for key, param in self.params.items()}


_FAMILIES: dict[str, Family] = {}
_SPECS: dict[str, dict] = {}  # method name -> the spec that produced it
_METHODS: dict[str, Method] = {}  # method name -> the one Method object of that name
_AVAILABILITY: dict[tuple[str, str], Availability] = {}


def register_family(
    name: str,
    *,
    category: str,
    label: Callable[[Mapping], str],
    method_name: Callable[[Mapping], str] | None = None,
    params: Mapping[str, Param] | None = None,
    probe: Callable[..., Availability] | None = None,
    dense_reference: bool = False,
) -> Callable[[Callable[..., PreparedAttention]], Callable[..., PreparedAttention]]:
    """Decorator registering ``build(problem, device, **params) -> PreparedAttention`` as a family.

    ``method_name(params)`` defaults to the family name (for families without parameters); ``probe``
    defaults to always available. The build function is returned unchanged.
    """
    if category not in CATEGORIES:
        raise ValueError(f"family {name!r}: category {category!r} is not one of {CATEGORIES}")

    def decorate(build: Callable[..., PreparedAttention]) -> Callable[..., PreparedAttention]:
        if name in _FAMILIES:
            raise ValueError(f"method family {name!r} is registered twice")
        _FAMILIES[name] = Family(
            name=name,
            category=category,
            params=MappingProxyType(dict(params or {})),
            build=build,
            probe=probe or (lambda device, **_: Availability(True)),
            method_name=method_name or (lambda _params: name),
            label=label,
            dense_reference=dense_reference,
        )
        return build

    return decorate


def _load_families() -> dict[str, Family]:
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return _FAMILIES


def family_names() -> list[str]:
    return sorted(_load_families())


def family(name: str) -> Family:
    families = _load_families()
    if name not in families:
        raise ValueError(f"unknown method family {name!r}; valid families: {', '.join(sorted(families))}")
    return families[name]


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _cached_availability(fam: Family, method_name: str, params: Mapping, device: torch.device) -> Availability:
    key = (method_name, _device_key(device))
    if key not in _AVAILABILITY:
        try:
            _AVAILABILITY[key] = fam.probe(device, **params)
        except Exception as exc:  # a probe must never take the run down
            _AVAILABILITY[key] = Availability(False, f"availability probe failed: {type(exc).__name__}: {exc}")
    return _AVAILABILITY[key]


def _check_params(fam: Family, given: Mapping) -> dict:
    unknown = sorted(set(given) - set(fam.params))
    if unknown:
        valid = ", ".join(f"{key} ({param.accepts})" for key, param in fam.params.items()) or "none"
        raise ValueError(f"method family {fam.name!r}: unknown parameter {unknown[0]!r}; valid parameters: {valid}")
    params = fam.defaults()
    for key, value in given.items():
        try:
            params[key] = fam.params[key].check(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"method family {fam.name!r}: bad value {value!r} for {key!r} ({exc}); "
                f"valid: {fam.params[key].accepts}") from None
    return params


def make_method(fam: Family, params: Mapping) -> Method:
    """The `Method` of ``fam`` with these (already checked) parameters."""
    frozen = MappingProxyType(dict(params))
    name = fam.method_name(frozen)
    if name in _METHODS:  # names encode every parameter, so equal names are equal methods
        return _METHODS[name]
    _SPECS[name] = {"method": fam.name, **frozen}
    _METHODS[name] = Method(
        name=name,
        label=fam.label(frozen),
        family=fam.category,
        params=frozen,
        dense_reference=fam.dense_reference,
        check_availability=lambda device: _cached_availability(fam, name, frozen, device),
        build=lambda problem, device: _stamped(fam.build(problem, device, **frozen), name),
    )
    return _METHODS[name]


def _stamped(prepared: PreparedAttention, name: str) -> PreparedAttention:
    """Builds are shared by every parametrization of a family; the method name is the registry's."""
    prepared.method = name
    return prepared


def resolve(spec: str | Mapping) -> Method:
    """A `Method` from a family name, a method name resolved before, or ``{"method": family, **params}``."""
    if isinstance(spec, str):
        families = _load_families()
        if spec in families:
            return make_method(families[spec], families[spec].defaults())
        if spec not in _SPECS:
            all_methods()  # registers the default names (hilberta_t16, ...)
        if spec in _SPECS:
            return resolve(_SPECS[spec])
        raise ValueError(f"unknown method {spec!r}; valid families: {', '.join(sorted(families))} "
                         f"(or a dict {{'method': family, **params}})")
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ValueError(f"a method spec is a family name or a dict with a 'method' key, got {spec!r}")
    fam = family(spec["method"])
    return make_method(fam, _check_params(fam, {k: v for k, v in spec.items() if k != "method"}))


def spec_of(method: Method) -> dict:
    """The spec that `resolve` turns back into ``method`` (for results rows and subprocesses)."""
    if method.name not in _SPECS:
        raise ValueError(f"method {method.name!r} was not produced by the registry")
    return dict(_SPECS[method.name])


def all_methods() -> list[Method]:
    """The default parametrization of every family, in family-name order."""
    families = _load_families()
    return [make_method(families[name], families[name].defaults()) for name in sorted(families)]


def listing(device: torch.device | str) -> list[dict]:
    """One row per default method: name, label, family, dense_reference, available, reason."""
    rows = []
    for method in all_methods():
        avail = method.availability(device)
        rows.append({"name": method.name, "label": method.label, "family": method.family,
                     "dense_reference": method.dense_reference, "available": avail.ok, "reason": avail.reason})
    return rows


# ---- availability checks shared by the families ----------------------------------------------------------

def triton_kernel_probe(device: torch.device, module: str, backend: str) -> Availability:
    """One of our Triton kernels (in ``module``) can run here: on CUDA, or on the CPU in the interpreter."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or triton failing to initialise
        return Availability(False, f"{module} does not import: {type(exc).__name__}: {exc}")
    if device.type == "cuda":
        return Availability(True, backend) if torch.cuda.is_available() else Availability(False, "no CUDA device")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return Availability(True, f"{backend} (Triton interpreter)")
    return Availability(False, f"Triton kernels run on CUDA, or on the CPU with TRITON_INTERPRET=1; got {device}")


# ---- parameter checks shared by the families (the one validator kit: baselines.validate) -----------------

positive_int = validate.integer(1)
odd_int = validate.odd_integer(1)
int_pair = validate.int_pair
fraction = validate.number(0.0, below=1.0)


def one_of(*choices) -> Callable[[object], object]:
    return validate.choice(choices)


def kernel_config(value) -> dict | None:
    """A launch config for one of our Triton kernels (`kernels.config.KernelConfig` or a table of its fields),
    as a plain dict; None: the kernel's stored tuned config, else its safe default."""
    if value is None:
        return None
    from kernels.config import KernelConfig  # here, not at the top: importing kernels imports Triton

    if isinstance(value, KernelConfig):
        return value.to_dict()
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table of KernelConfig fields, got {value!r}")
    return KernelConfig(**value).to_dict()


def config_name(config: Mapping) -> str:
    """``m64_n64_w4_s2``: the name of a launch config given as a dict."""
    from kernels.config import KernelConfig  # here, not at the top: importing kernels imports Triton

    return KernelConfig(**config).name
