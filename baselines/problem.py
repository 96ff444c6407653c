"""One attention workload: the shapes every method is prepared for, timed on and checked against.

A `Problem` is the joint Flux sequence ``[text tokens | image tokens]`` of one resolution. Image tokens
form a ``height x width`` grid (pixels / 16 on each side: VAE /8, then 2x2 patches). ``layer`` is the
transformer block index, which picks HilbertA's sliding phase (other methods ignore it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PIXELS_PER_TOKEN = 16  # VAE factor 8 x 2x2 patchify


@dataclass(frozen=True)
class Problem:
    height: int  # image token rows
    width: int  # image token columns
    text_tokens: int = 512
    batch: int = 1
    heads: int = 24
    head_dim: int = 128
    dtype: str = "bfloat16"
    layer: int = 0

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image grid must be positive, got {self.height}x{self.width} tokens")
        for field in ("batch", "heads", "head_dim"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.text_tokens < 0 or self.layer < 0:
            raise ValueError("text_tokens and layer must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")

    @classmethod
    def from_pixels(cls, width_px: int, height_px: int, **kwargs) -> Problem:
        """``Problem.from_pixels(1536, 1024)`` is a 64-row x 96-column token grid."""
        for px in (width_px, height_px):
            if px % PIXELS_PER_TOKEN:
                raise ValueError(f"{px} px is not a multiple of {PIXELS_PER_TOKEN} (VAE /8 x 2x2 patch)")
        return cls(height=height_px // PIXELS_PER_TOKEN, width=width_px // PIXELS_PER_TOKEN, **kwargs)

    @property
    def image_tokens(self) -> int:
        return self.height * self.width

    @property
    def seq_len(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def resolution(self) -> str:
        """Image size in pixels, width x height, e.g. ``2048x2048``."""
        return f"{self.width * PIXELS_PER_TOKEN}x{self.height * PIXELS_PER_TOKEN}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def dense_flops(self) -> float:
        """Forward FLOPs of dense attention: two matmuls of 2*L*L*D each, per batch and head."""
        return 4.0 * self.batch * self.heads * self.seq_len**2 * self.head_dim

    @property
    def compulsory_bytes(self) -> int:
        """Q, K, V read once and O written once."""
        return 4 * self.batch * self.heads * self.seq_len * self.head_dim * self.element_size

    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.seq_len, self.head_dim)

    def random_qkv(self, device: torch.device | str, seed: int | None = None):
        """Fresh random q, k, v of this problem's shape (never zeros), [B, H, L, D]."""
        gen = torch.Generator(device=device)
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        return tuple(
            torch.randn(self.shape(), device=device, dtype=self.torch_dtype, generator=gen) for _ in range(3)
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "resolution": self.resolution, "seq_len": self.seq_len}
