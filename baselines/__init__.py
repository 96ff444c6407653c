"""Every attention method behind one interface: dense FlashAttention/cuDNN, HilbertA, row-major sliding
tiles (STA), neighbourhood attention (NA), each registered in `baselines.registry` with an availability
check. See `baselines.base` for the interface and `python -m baselines` for the listing."""

from baselines.registry import (
    MethodUnavailable,
    all_methods,
    family_names,
    listing,
    resolve,
    spec_of,
)

__all__ = ["MethodUnavailable", "all_methods", "family_names", "listing", "resolve", "spec_of"]
