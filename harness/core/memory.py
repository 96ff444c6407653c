"""How much memory a case will need, estimated before it runs, and whether that fits here.

A case needs its problem's q, k, v and output, the correctness check's own fresh inputs and the exact
reference's working set (float64 on a CPU, float32 on a GPU, a chunk of query rows at a time: see
`kernels.reference`), plus whatever the method itself builds where we know it (`METHOD_WORKING_SETS`:
SDPA's math backend and eager FlexAttention hold whole [B, H, L, L] score matrices, Flex's block mask on
a CPU evaluates the whole [L, L] mask, HilbertA keeps its layout). A case whose estimate exceeds the memory
free on its device (`free_bytes`: CUDA's free memory plus what PyTorch's cache holds; on a CPU the
available memory, capped by the cgroup limit) becomes a ``skipped`` row that states the estimate, instead
of a run the OOM killer ends without a word. A problem whose inputs alone exceed the device's *total*
memory is not a benchmark at all: `absurd_problems` lets the command line refuse it up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from baselines.base import Method
from baselines.problem import Problem

HEADROOM = 0.9  # the share of the free memory a case may plan to fill (the allocator needs slack)
REFERENCE_CHUNK_ROWS = 512  # kernels.reference.reference_attention's chunk_rows
GIB = 1024**3
MEMINFO = Path("/proc/meminfo")
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
CGROUP_USAGE = (Path("/sys/fs/cgroup/memory.current"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"))


@dataclass(frozen=True)
class Estimate:
    """Bytes a case (or a problem's inputs) will hold at its peak, by part."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {"total_bytes": self.total, "parts": dict(self.parts)}


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.3g} GiB"


def tensor_bytes(problem: Problem, itemsize: int | None = None) -> int:
    """One [B, H, L, D] tensor of the problem (q, k, v or the output)."""
    itemsize = problem.element_size if itemsize is None else itemsize
    return problem.batch * problem.heads * problem.seq_len * problem.head_dim * itemsize


def scores_bytes(problem: Problem, itemsize: int) -> int:
    """One [B, H, L, L] score matrix."""
    return problem.batch * problem.heads * problem.seq_len**2 * itemsize


def inputs_estimate(problem: Problem) -> Estimate:
    """q, k, v shared by every case of the problem, and one output."""
    return Estimate({"q/k/v": 3 * tensor_bytes(problem), "output": tensor_bytes(problem)})


def _rows_checked(problem: Problem, policy) -> int:
    """As `harness.measure.correctness.rows_to_check` picks them."""
    length = problem.seq_len
    return length if length <= policy.all_rows_max_len or length <= policy.rows else policy.rows


def reference_estimate(problem: Problem, policy, device: torch.device) -> dict[str, int]:
    """The correctness check: fresh q, k, v, the output and a NaN block of its size, then the reference."""
    high = 8 if device.type == "cpu" else 4
    p, rows = problem, _rows_checked(problem, policy)
    chunk = min(rows, REFERENCE_CHUNK_ROWS)
    heads = p.batch * p.heads
    return {"check inputs": 5 * tensor_bytes(p),
            "reference": (2 * tensor_bytes(p, high) + heads * chunk * p.head_dim * high  # k, v, q chunk
                          + 2 * heads * chunk * p.seq_len * high + chunk * p.seq_len  # scores, softmax, mask
                          + heads * rows * p.head_dim * high)}  # its output rows


def _uses_flex(method: Method) -> bool:
    return "flex" in method.name or (method.family == "neighborhood" and method.params.get("impl") != "natten")


def _flex(problem: Problem, device: torch.device) -> dict[str, int]:
    if device.type == "cuda":  # compiled: the mask is evaluated block by block; only its tables stay
        blocks = -(-problem.seq_len // 128)
        return {"flex block mask": 4 * blocks * blocks * 4}
    return {"flex scores (eager)": 2 * scores_bytes(problem, 4), "flex mask": problem.seq_len**2}


# (applies to the method?, its working set on this device): what we know each kind of method builds.
METHOD_WORKING_SETS: tuple[tuple[Callable[[Method], bool], Callable[[Problem, torch.device], dict]], ...] = (
    (lambda m: m.name == "sdpa_math", lambda p, d: {"sdpa math scores": 2 * scores_bytes(p, p.element_size)}),
    (_uses_flex, _flex),
    (lambda m: m.family in ("hilberta", "control"), lambda p, d: {"layout": 4 * p.image_tokens * 8}),
)


def case_estimate(problem: Problem, method: Method, policy, device: torch.device) -> Estimate:
    """Peak bytes of one case: inputs, the correctness check and reference, the method's own working set."""
    parts = {**inputs_estimate(problem).parts, **reference_estimate(problem, policy, device)}
    for applies, working_set in METHOD_WORKING_SETS:
        if applies(method):
            parts.update(working_set(problem, device))
    return Estimate(parts)


# ---- what this machine has ---------------------------------------------------------------------------------

def _read_int(paths: Iterable[Path]) -> int | None:
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None  # "max": no limit
    return None


def _meminfo(key: str) -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_bytes(meminfo_key: str, minus_usage: bool) -> int | None:
    system = _meminfo(meminfo_key)
    limit = _read_int(CGROUP_LIMITS)
    if limit is not None and minus_usage:
        limit -= _read_int(CGROUP_USAGE) or 0
    known = [n for n in (system, limit) if n is not None]
    return min(known) if known else None


def free_bytes(device: torch.device) -> int | None:
    """Memory a new case can still get on ``device``; None when this machine does not say."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return _cpu_bytes("MemAvailable", minus_usage=True) if device.type == "cpu" else None


def total_bytes(device: torch.device) -> int | None:
    """All the memory of ``device`` (a CPU: the machine's, capped by the cgroup limit); None if unknown.
    A GPU's comes from its properties, which need no CUDA context: the parent of a ``--gpus`` run checks its
    input with this while its workers start, and a context there would sit on card 0 (and its creation
    would contend with theirs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return _cpu_bytes("MemTotal", minus_usage=False) if device.type == "cpu" else None


# ---- decisions ---------------------------------------------------------------------------------------------

def skipped_fields(estimate: Estimate, device: torch.device) -> dict | None:
    """A skipped row's status, reason and estimate when ``estimate`` does not fit in the free memory now;
    None when it fits (or this machine does not say how much is free)."""
    free = free_bytes(device)
    if free is None or estimate.total <= HEADROOM * free:
        return None
    biggest = max(estimate.parts, key=estimate.parts.get)
    return {"status": "skipped",
            "reason": f"memory estimate {gib(estimate.total)} (largest part: {biggest} "
                      f"{gib(estimate.parts[biggest])}) exceeds the {gib(free)} free on {device}",
            "extra": {"memory_estimate": {**estimate.to_dict(), "free_bytes": free}}}


def absurd_problems(problems: Iterable[Problem], device: torch.device) -> str | None:
    """One line naming the first problem whose q, k, v and output alone exceed all of ``device``'s memory;
    None when every problem could fit (or the total is unknown)."""
    total = total_bytes(device)
    for problem in problems:
        need = inputs_estimate(problem).total
        if total is not None and need > total:
            return (f"resolution {problem.resolution} ({problem.seq_len} tokens) needs {gib(need)} for q, k, v "
                    f"and the output alone; {device} has {gib(total)} in all")
    return None
