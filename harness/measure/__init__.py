"""Measurement primitives: the interleaved schedule and timing, statistics, correctness, NVML power and energy,
roofline ceilings, ncu traffic, environment fingerprint.

Each module measures one thing and knows nothing of suites, runs or applications. Depends on ``baselines``
and ``kernels`` only.
"""
