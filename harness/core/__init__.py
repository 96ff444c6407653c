"""Orchestration core: suites, the case lifecycle, the runner and the results file (schema and I/O).

Depends on ``harness.measure``, ``baselines`` and ``kernels``; never on ``harness.apps`` or ``reports``.
"""
