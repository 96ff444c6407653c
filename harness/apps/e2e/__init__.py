"""End-to-end Flux.1-dev latency with each attention method (kind "e2e" rows; see `harness.apps.e2e.measure`).

``run_e2e_cases(e2e_section, results_file, device)`` is what the suite runner calls; ``python -m harness e2e``
(`harness.apps.e2e.cli`) runs it on its own. The names are loaded on first use (PEP 562): importing this
package, which every ``python -m harness`` command does to register ``e2e``, must not import diffusers.
"""

import importlib

_LAZY = {"run_e2e_cases": "harness.apps.e2e.measure", "E2ESettings": "harness.apps.e2e.settings"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
