"""Applications built on the core and on measurement: gate (+ A/B), tune, end-to-end Flux, kernel bench,
GPU self-check. An application never imports another application.
"""
