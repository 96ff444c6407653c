"""Warm workers: one resident process per card that has paid a process's start-up once (issue #17).

A fresh worker pays 10-15 s before its first timed call on an H200 (interpreter and torch 3 s, FA4's
import and probe 6 s, the CUDA context, the engines' first compiles and Flex's first trace), which no
number of cards divides. ``python -m harness serve --gpus N`` starts one worker per card that pays it once
and then waits on a Unix socket; while it runs, ``python -m harness run`` hands its work to them instead
of starting processes (`harness.core.spread.pool.start_workers` asks `connect` first, card by card), with
any ``--gpus``, one included. A run on a warm worker is the same run: the same `serve_run`, the same
results, ``env.spread.cards[i].warm`` saying which process ran it and how many runs it had served before.

What keeps a warm worker honest:
- It serves only the code and environment it started with (`fingerprint`: every ``.py`` file of the
  project, the interpreter and its installed distributions, the environment variables that change what
  runs). On any difference it refuses the run, says what differs, and exits; the run starts fresh workers
  (`python -m harness serve` warms them again). The tuned configs are read by their mtime on each use.
- A card whose warm worker is busy with another run is refused (`CardBusy`, one line), never timed beside it.
- Ctrl-C in the run cancels the warm worker's run (SIGINT) and leaves the worker warm; a run that leaves
  CUDA in an error state ends the worker. After ``--idle-minutes`` (default 60) without a run it exits.
- A run names code to import (an [e2e] runner): the workers' folder is private (0700, `private_dir`), the
  socket 0600, and both ends check that the other runs as the same user (`same_user`).

Sockets and the workers' own logs live in ``$HILBERTA_RUNTIME_DIR`` (default ``/tmp/hilberta-bench-<uid>``),
one folder per checkout. Only the standard library is imported here: the parent has not imported torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import site
import socket
import stat
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import PROJECT_ROOT, STARTING_ENVIRON

HANDSHAKE_S = 2.0  # a warm worker answers within this, or it is busy with another run
FINGERPRINT_DIRS = ("harness", "kernels", "baselines", "suites", "reports")
# environment variables that change what a run does (the harness's, torch's, the engines', CUDA's)
ENV_PREFIXES = ("TRITON_", "TORCH", "PYTORCH_", "CUDA_", "CUDNN_", "CUBLAS_", "NCCL_", "NVSHMEM_", "NVIDIA_",
                "FLASH_", "CUTE_", "HILBERTA_", "OMP_", "MKL_", "PYTHON", "LD_LIBRARY_PATH", "HF_", "XDG_CACHE_HOME",
                "HOME")
ENV_PER_CARD = ("CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                "HILBERTA_RUNTIME_DIR")


class CardBusy(ValueError):
    """A card's warm worker is running another run: this one is refused rather than timed beside it."""


def runtime_dir(root: Path = PROJECT_ROOT) -> Path:
    """The folder of this checkout's warm workers: sockets and the workers' own logs."""
    base = Path(os.environ.get("HILBERTA_RUNTIME_DIR") or Path(tempfile.gettempdir()) / f"hilberta-bench-{os.getuid()}")
    return base / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]


def private_dir(path: Path) -> Path:
    """``path`` made (mode 0700) or checked: a directory of this user's that no one else may write or enter (a
    warm worker runs what comes on its socket; another user must not reach it). ValueError, one line, if not."""
    for folder in (path.parent, path):  # the per-user base and this checkout's folder in it
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ValueError(f"{folder} is not a private directory of this user (mode {stat.filemode(info.st_mode)}, "
                             f"owner uid {info.st_uid}): warm workers need one; remove it or set HILBERTA_RUNTIME_DIR")
    return path


def same_user(conn: socket.socket) -> bool:
    """Whether the process at the other end of a Unix socket runs as this user (SO_PEERCRED)."""
    pid_uid_gid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", pid_uid_gid)[1] == os.getuid()


def socket_path(card: str) -> Path:
    """The socket of the warm worker on ``card`` (its CUDA_VISIBLE_DEVICES entry: an index or a UUID)."""
    return runtime_dir() / f"gpu-{re.sub(r'[^A-Za-z0-9-]', '_', card)}.sock"


def worker_log(card: str) -> Path:
    """The warm worker's own log (each run's output goes to that run's log)."""
    return socket_path(card).with_suffix(".log")


def fingerprint(root: Path = PROJECT_ROOT) -> dict:
    """What a warm worker must share with a run it serves: digests of the project's code and of the installed
    distributions, the interpreter, and the environment variables that change a run (by name) as the process
    got them."""
    code = hashlib.sha256()
    for folder in FINGERPRINT_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            code.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    dists = hashlib.sha256()  # the installations: site-packages and PYTHONPATH (never the caller's own folder)
    folders = [*site.getsitepackages(), site.getusersitepackages(),
               *filter(None, STARTING_ENVIRON.get("PYTHONPATH", "").split(os.pathsep))]
    for folder in folders:
        try:
            names = sorted(name for name in os.listdir(folder) if name.endswith((".dist-info", ".egg-info", ".pth")))
        except OSError:
            continue
        dists.update(f"{folder}:{','.join(names)}\n".encode())
    env = {name: value for name, value in STARTING_ENVIRON.items()
           if name.startswith(ENV_PREFIXES) and name not in ENV_PER_CARD}
    return {"code": code.hexdigest(), "python": f"{sys.executable} {sys.version}", "packages": dists.hexdigest(),
            "env": env}


def stale_reason(served: dict, asked: dict, defaults: dict[str, str] | None = None) -> str | None:
    """Why a warm worker started with ``served`` cannot serve a run with ``asked`` (None: it can).
    ``defaults``: the variables the worker's imports set because they were unset (the harness's own
    defaults, e.g. one Inductor compile thread): a run that leaves them unset gets the same in a fresh worker."""
    if served.get("code") != asked.get("code"):
        return "the project's code changed since it started"
    if served.get("python") != asked.get("python"):
        return f"another Python ({asked.get('python', '?').split()[0]})"
    if served.get("packages") != asked.get("packages"):
        return "the installed packages changed since it started"
    theirs, mine = {**(defaults or {}), **(served.get("env") or {})}, {**(defaults or {}), **(asked.get("env") or {})}
    differ = sorted(name for name in set(theirs) | set(mine) if theirs.get(name) != mine.get(name))
    return f"environment variable(s) differ: {', '.join(differ)}" if differ else None


def _ask(path: Path, request: dict, timeout_s: float = HANDSHAKE_S) -> tuple[socket.socket, dict]:
    """Send one request line and read one reply line (OSError or TimeoutError when there is no answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        if not same_user(sock):
            raise ConnectionError(f"{path} is served by another user")
        sock.sendall((json.dumps({**request, "sent": time.time()}) + "\n").encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the warm worker closed the connection")
            reply += chunk
    except BaseException:
        sock.close()
        raise
    return sock, json.loads(reply)


class WarmRun:
    """A run handed to a warm worker, as `harness.core.spread.pool.Pool` sees a process: its payload's path
    goes to ``stdin``, ``poll`` gives its exit code once the worker reports it, ``terminate`` cancels it."""

    def __init__(self, sock: socket.socket, reply: dict):
        self.sock, self.pid, self.returncode = sock, reply["pid"], None
        self.stdin = sock.makefile("w")
        self._reply = b""

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            chunk = b""
        self._reply += chunk
        if chunk and not self._reply.endswith(b"\n"):
            return None
        try:  # the worker's last line; a connection closed without it: the worker died
            self.returncode = int(json.loads(self._reply)["returncode"]) if chunk else -1
        except (ValueError, KeyError, TypeError):
            self.returncode = -1
        self.sock.close()
        return self.returncode

    def terminate(self) -> None:
        """Cancel the run (SIGINT: the worker stops it and stays warm for the next)."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def connect(card: str, selection: dict, log: Path) -> tuple[WarmRun | None, dict | str]:
    """Hand a run to the warm worker on ``card``: (the run, the worker's reply) or (None, why not; empty when
    no warm worker was started for this card).
    Raises `CardBusy` when the worker is busy with another run."""
    path = socket_path(card)
    if not path.exists():
        return None, ""
    try:
        sock, reply = _ask(path, {"fingerprint": fingerprint(), "selection": selection, "log": str(log)})
    except TimeoutError:
        raise CardBusy(f"card {card}: its warm worker is busy with another run; wait for it, or stop it with "
                       "`python -m harness serve --stop`") from None
    except (OSError, ValueError):  # a socket left by a worker that is gone
        return None, "no warm worker on this card (a stale socket: the worker is gone)"
    if "refused" in reply:
        sock.close()
        what = "stopped" if reply.get("exits") else "refused the run"
        return None, f"the warm worker on this card {what}: {reply['refused']}"
    return WarmRun(sock, reply), reply


@dataclass
class Answer:
    card: str
    reply: dict | None  # the worker's answer to a ping, None when no worker answers
    why: str = ""


def ping(card: str) -> Answer:
    path = socket_path(card)
    if not path.exists():
        return Answer(card, None, "not running")
    try:
        sock, reply = _ask(path, {"ping": True, "fingerprint": fingerprint()})
        sock.close()
    except TimeoutError:
        return Answer(card, {"busy": True}, "busy with a run")
    except (OSError, ValueError):
        return Answer(card, None, "not running (stale socket)")
    return Answer(card, reply)


def stop(card: str) -> str:
    """Ask the warm worker on ``card`` to exit; says what happened."""
    try:
        sock, reply = _ask(socket_path(card), {"stop": True})
        sock.close()
    except TimeoutError:
        return "busy with a run: not stopped (ask again when the run has ended)"
    except (OSError, ValueError):
        return "no warm worker"
    return "stopped" if "stopped" in reply else f"not stopped: {reply}"
