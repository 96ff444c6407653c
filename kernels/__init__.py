"""The thing under test: HilbertA's curves, layout, exact reference and Triton kernel.

Knows nothing of timing or reports. See docs/contracts.md for the interface the rest of the project uses.
"""

from kernels.config import KernelConfig
from kernels.curves import CURVES, curve_order
from kernels.hilbert_attention import hilbert_attention, hilbert_attention_computed_pairs
from kernels.layout import HilbertLayout
from kernels.reference import reference_attention, relative_error

__all__ = [
    "CURVES",
    "HilbertLayout",
    "KernelConfig",
    "curve_order",
    "hilbert_attention",
    "hilbert_attention_computed_pairs",
    "reference_attention",
    "relative_error",
]
