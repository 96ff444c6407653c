"""Launch configurations of our Triton kernels, per GPU architecture, stored as data.

`kernels/configs/<arch>.json` (e.g. ``sm90.json``) is written by ``python -m harness tune`` and holds, for
each kernel, entries keyed by what a best configuration depends on: head dim, dtype, sequence-length
bucket and tile-length bucket. Kernels call `lookup` at launch; with no matching entry they fall back to a
safe default and say so once. Nothing autotunes silently in the middle of a benchmark.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int = 128  # query rows per program
    block_n: int = 64  # keys per inner-loop step
    num_warps: int = 8
    num_stages: int = 3
    flat_loop: bool = False  # one pipelined loop over all key segments (masking every block) vs one per segment
    tma: bool = False  # K/V through tensor descriptors (Hopper's bulk copy engine) instead of pointer loads
    head_major: bool = False  # schedule blocks head by head (heavy ones first) instead of all heads together
    qk_ahead: bool = False  # flat loop only: block i's QK^T issued before block i-1's PV, which overlaps i's softmax
    tma_qo: bool = False  # Q load and (full blocks') O store through tensor descriptors too

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        flags = "".join(suffix for on, suffix in (
            (self.flat_loop, "_flat"), (self.tma, "_tma"), (self.head_major, "_hm"), (self.qk_ahead, "_qkahead"),
            (self.tma_qo, "_tmaqo")) if on)
        return f"m{self.block_m}_n{self.block_n}_w{self.num_warps}_s{self.num_stages}{flags}"


# Safe defaults: compile on every Triton target and every supported head dim; not tuned for speed. HilbertA's
# schedules head by head (an H100, 2026-11-28: 6.5 % faster at 4096x4096 T=4, within noise elsewhere).
DEFAULTS = {
    "hilberta": KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, head_major=True),
    "sta": KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2),
}
CPU_DEFAULT = KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)  # interpreter: small blocks


def config_space(head_dim: int) -> list[KernelConfig]:
    """The sweep that `harness tune` searches for HilbertA: block sizes and warps, pipeline depth, the loop
    shape, TMA loads and the launch order. Pruned by what an H100 showed (2026-11-27: a 24-config sweep at
    the Flux shapes and a 32-config tune): 32-key blocks, 8 warps on 64-row blocks and 4 stages were never
    the best; 4 stages of 128-key blocks do not fit in shared memory at head dim 128. Tried on an H100 and left
    out (2026-11-28, docs/kernel-notes.md): Triton 3.6's Hopper warp specialization and a lazy (thresholded)
    softmax rescale, both slower at every suite problem; persistent programs (an H200, 3-10 % slower). Issue
    #14's ``tma_qo`` and ``qk_ahead`` are searched where they can win: with TMA loads and the head-major order
    (qk_ahead needs the flat loop; an H200: 5 % faster together at 2048x2048 T=16, alone neither helps)."""
    space = []
    for block_m, num_warps in ((128, 8), (128, 4), (64, 4)):
        for block_n in (64, 128):
            if block_n > 2 * head_dim or (num_warps == 4 and block_m == 128 and block_n == 128):
                continue
            for num_stages in (2, 3):
                for flat_loop in (False, True):
                    for tma in (False, True):
                        for head_major in (False, True):
                            base = KernelConfig(block_m, block_n, num_warps, num_stages, flat_loop, tma, head_major)
                            space.append(base)
                            if tma and head_major:
                                space.append(replace(base, tma_qo=True))
                                if flat_loop:
                                    space.append(replace(base, qk_ahead=True, tma_qo=True))
    return space


def device_arch(device: torch.device | str | None = None) -> str:
    """``sm90`` for an H100/H200; ``cpu`` when there is no CUDA device (interpreter runs)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def seq_bucket(seq_len: int) -> int:
    """Power-of-two bucket of the sequence length (4608 -> 4096, 16896 -> 16384)."""
    return 1 << int(math.floor(math.log2(max(seq_len, 1))))


def config_key(head_dim: int, dtype: torch.dtype | str, seq_len: int, tile_len: int) -> str:
    dtype_name = str(dtype).replace("torch.", "")
    return f"d{head_dim}_{dtype_name}_L{seq_bucket(seq_len)}_g{seq_bucket(tile_len)}"


def config_path(arch: str) -> Path:
    return CONFIG_DIR / f"{arch}.json"


@lru_cache(maxsize=None)
def _load_file(path: str, mtime: float) -> dict:
    with open(path) as f:
        return json.load(f)


def load_arch_file(arch: str) -> dict:
    path = config_path(arch)
    if not path.exists():
        return {}
    return _load_file(str(path), path.stat().st_mtime)


_warned: set[tuple[str, str, str]] = set()


def lookup(kernel: str, arch: str, key: str, default: KernelConfig | None = None) -> tuple[KernelConfig, str]:
    """The stored best config for (kernel, arch, key), else ``default`` (the kernel's safe default unless the
    kernel says what fits this problem), named in a warning once. Returns (config, source)."""
    if arch == "cpu":
        return CPU_DEFAULT, "cpu-interpreter default"
    entries = load_arch_file(arch).get("kernels", {}).get(kernel, {})
    entry = entries.get(key)
    if entry is not None:
        return KernelConfig(**entry["config"]), f"{config_path(arch).name}:{key}"
    default = default or DEFAULTS[kernel]
    if (kernel, arch, key) not in _warned:
        _warned.add((kernel, arch, key))
        log.warning("no tuned %s config for %s %s; using the safe default %s (run `nox -s tune`)",
                    kernel, arch, key, default.name)
    return default, "default"


def store(kernel: str, arch: str, key: str, config: KernelConfig, evidence: dict, meta: dict) -> Path:
    """Write one tuned entry into ``configs/<arch>.json`` (atomically), keeping the other entries.

    Two tunes storing at once (one per card) each read, change and replace the file under a lock on its
    folder, so neither loses the other's entry."""
    path = config_path(arch)
    path.parent.mkdir(parents=True, exist_ok=True)  # an empty folder does not travel with a git checkout
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"arch": arch, "kernels": {}}
        data.setdefault("kernels", {}).setdefault(kernel, {})[key] = {"config": config.to_dict(), **evidence, **meta}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        os.close(folder)  # releases the lock
    return path
