"""Measurement primitives: timing, statistics, correctness, NVML power, ncu traffic, environment fingerprint.

Each module measures one thing and knows nothing of suites, runs or applications. Depends on ``baselines``
and ``kernels`` only.
"""
