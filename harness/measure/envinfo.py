"""The environment fingerprint stored with every run: what card, driver, libraries and code produced it.

Numbers from two runs are only comparable when this says they come from the same kind of machine and
software (an H100 SXM and an H100 PCIe differ by 1.5x; cuDNN versions change which SDPA kernel wins), so
`fingerprint` records the GPU, its limits and clocks at start, library versions, the git commit, and the
environment variables that change what runs. It never raises for a missing part: a CPU-only machine, a
missing package or a tree that is not a git repository give None plus a reason.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

import torch

from harness.measure import power
from harness import PROJECT_ROOT

# result key -> distribution name
PACKAGES = {
    "torch": "torch",
    "triton": "triton",
    "diffusers": "diffusers",
    "flash_attn": "flash-attn",
    "flash_attn_4": "flash-attn-4",  # FlashAttention-4 (flash_attn.cute): its own distribution
    "cutlass_dsl": "nvidia-cutlass-dsl",  # the CuTe DSL that compiles FA4's kernels
    "natten": "natten",
    "numpy": "numpy",
    "pandas": "pandas",
    "plotly": "plotly",
    "nvidia_ml_py": "nvidia-ml-py",
}
# Variables that change which kernels run or how they are timed.
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET", "TORCH_CUDNN_SDPA_DEPRIORITIZED", "CUDA_LAUNCH_BLOCKING",
    "PYTORCH_CUDA_ALLOC_CONF", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "CUBLAS_WORKSPACE_CONFIG", "TRITON_CACHE_DIR", "LD_LIBRARY_PATH",
    "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
    "TORCHINDUCTOR_COMPILE_THREADS",
)
GPU_KEYS = ("gpu_name", "gpu_uuid", "compute_capability", "sm_count", "memory_bytes", "l2_bytes")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for key, dist in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def gpu_properties(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu_name": props.name,
        "gpu_uuid": power.nvml_uuid(device),
        "compute_capability": f"sm{props.major}{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_bytes": props.L2_cache_size,
    }


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """``{"commit", "dirty", "reason"}``; dirty means tracked files differ from the commit. Read only.

    A tree copied without its history (as onto a lent GPU machine) can name its commit in
    HILBERTA_GIT_COMMIT (and HILBERTA_GIT_DIRTY=1 when it had changes); that is used when git cannot tell.
    """
    state = _git_state(root)
    if state["commit"] is None and os.environ.get("HILBERTA_GIT_COMMIT"):
        return {"commit": os.environ["HILBERTA_GIT_COMMIT"], "dirty": os.environ.get("HILBERTA_GIT_DIRTY") == "1",
                "reason": f"from HILBERTA_GIT_COMMIT; git said: {state['reason']}"}
    return state


def _git_state(root: Path) -> dict:
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None, "reason": "git is not installed"}
    # safe.directory: the tree may belong to another user (a copied checkout); no optional index writes.
    base = [git, "--no-optional-locks", "-c", f"safe.directory={root}", "-C", str(root)]
    try:
        head = subprocess.run(base + ["rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None, "reason": head.stderr.strip() or "git rev-parse failed"}
        toplevel, commit = head.stdout.split()
        if Path(toplevel).resolve() != root.resolve():
            return {"commit": None, "dirty": None, "reason": f"{root} is not a repository root (inside {toplevel})"}
        status = subprocess.run(base + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"commit": None, "dirty": None, "reason": f"{type(exc).__name__}: {exc}"}
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit, "dirty": dirty, "reason": None if dirty is not None else status.stderr.strip()}


def fingerprint(device: torch.device | str) -> dict:
    """GPU, driver, CUDA/cuDNN, library versions, NVML limits and clocks at start, host, git, env vars."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gpu = gpu_properties(device)
    else:
        gpu = dict.fromkeys(GPU_KEYS)
    return {
        "device": str(device),
        **gpu,
        "driver_version": power.driver_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "versions": {"python": platform.python_version(), **package_versions()},
        "nvml": power.snapshot(device),
        "torch_settings": {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        },
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
                 "cpu_count": os.cpu_count()},
        "git": git_state(),
        "env_vars": {name: os.environ.get(name) for name in ENV_VARS},
    }
