"""The settings of an end-to-end run: the suite's ``[e2e]`` table or the ``e2e`` command line, checked.

`E2ESettings.from_section` is also the check `python -m harness run` gives the suite loader for ``[e2e]``
(`harness.core.suite.load_suite`), so a mistake is reported with its line before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from baselines.problem import DTYPES, Problem
from baselines.validate import Invalid, boolean, choice, integer, number, optional, text
from harness.apps.e2e.flux_model import model_spec
from harness.core.cases import parse_pixels
from harness.measure.timing import TimingPolicy


def step_policy(repeats: int) -> TimingPolicy:
    """Exactly ``repeats`` timed steps after one warm-up step (the first call ran before).

    A step is long (0.2 s at 1024 px), so the sample count, not a time budget, decides; its working set
    (24 GB of weights) dwarfs L2, so there is nothing to flush.
    """
    return TimingPolicy(warmup_ms=0.0, min_samples=repeats, max_samples=repeats, budget_ms=1.0, rounds=1,
                        l2_flush=False)


SETTING_CHECKS = {  # field -> check from the one validator kit (baselines.validate)
    "steps": integer(1),
    "step_repeats": integer(1),
    "text_tokens": integer(0),
    "seed": integer(0),
    "skip_denoise": boolean,
    "contiguous_qkv": boolean,
    "max_denoise_s": optional(number(0, strict=True)),
    "guidance": number(-math.inf),
    "weights": optional(text),
    "dtype": choice(DTYPES),
}


@dataclass(frozen=True)
class E2ESettings:
    resolutions: tuple[tuple[int, int], ...] = ((1024, 1024), (2048, 2048))  # pixels, width x height
    methods: tuple = ("sdpa_cudnn", "hilberta")  # registry specs; the diffusers reference always runs
    steps: int = 28  # denoising steps of the full image
    step_repeats: int = 5  # timed transformer steps (and instrumented steps)
    skip_denoise: bool = False  # step latency only: no full image, no decode, no energy
    max_denoise_s: float | None = None  # skip the full image when steps x step time would exceed this
    weights: str | None = None  # local FLUX.1-dev folder; None = random weights
    model: str = "flux-dev"  # or "tiny" (CPU tests and smoke runs)
    dtype: str = "bfloat16"
    text_tokens: int = 512
    guidance: float = 3.5
    seed: int = 0
    contiguous_qkv: bool = False  # copy q, k, v to contiguous [B, H, L, D] before attention (timed with it)

    @classmethod
    def from_section(cls, section: Mapping) -> E2ESettings:
        """Settings from a suite's ``[e2e]`` table; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"[e2e]: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
        values = dict(section)
        if "resolutions" in values:
            values["resolutions"] = tuple(parse_pixels(r) for r in values["resolutions"])
        if "methods" in values:
            values["methods"] = tuple(values["methods"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name, check in SETTING_CHECKS.items():
            try:
                check(getattr(self, name))
            except Invalid as exc:
                raise ValueError(f"[e2e]: {name}: {exc}") from None
        if not self.resolutions:
            raise ValueError("[e2e]: resolutions is empty")
        for width_px, height_px in self.resolutions:
            Problem.from_pixels(width_px, height_px)  # multiples of 16 px (VAE /8 x 2x2 patch)
        model_spec(self.model)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "resolutions": [f"{w}x{h}" for w, h in self.resolutions], "methods": list(self.methods)}
