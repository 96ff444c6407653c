"""Applications built on the core and on measurement: gate (+ A/B), tune, end-to-end Flux, GPU self-check.
An application never imports another application (checked by lint-imports; docs/architecture.md).
"""
