"""``python -m harness serve`` (start, status, stop the warm workers: `serve_command`) and the warm worker of
one card, ``python -m harness.core.spread.serve CARD DEVICE IDLE_S SOCKET`` (`WarmWorker`). What they are
for and what keeps them honest: `harness.core.spread.warm`.

It warms up once (imports, the CUDA context, every registered method's probe), then serves runs one at a
time on its socket. A run is a request line ``{"fingerprint", "selection", "log"}``: refused with
``{"refused": why, "exits": true}`` (and the worker exits) when the fingerprint differs from its own, else answered
``{"pid", "runs", "up_s"}``; its output then goes to the run's log, and it is the same `serve_run` a cold
worker does, its payload's path the next line on the socket. The last line is ``{"returncode": N}``.
``{"ping": ...}`` is answered with the worker's state, ``{"stop": true}`` ends it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import harness
from harness.core.spread.pool import Selection, card_env, card_label
from harness.core.spread.warm import (ENV_PREFIXES, HANDSHAKE_S, fingerprint, ping, private_dir, runtime_dir,
                                      same_user, socket_path, stale_reason, stop, worker_log)


# ---- python -m harness serve: start, status, stop ------------------------------------------------------------

def host_cards() -> int:
    """How many cards this process may use, without CUDA: CUDA_VISIBLE_DEVICES's entries, else /dev/nvidiaN."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([entry for entry in visible.split(",") if entry.strip()])
    return len([name for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name)])


def start(index: int, card: str, device: str, idle_s: float) -> subprocess.Popen:
    """Start the warm worker of card ``index`` (``card``: its CUDA_VISIBLE_DEVICES entry), detached, in the
    environment this process was started with (not the defaults its own imports may have added)."""
    private_dir(runtime_dir())
    with open(worker_log(card), "a") as log:
        return subprocess.Popen([sys.executable, "-m", "harness.core.spread.serve", card, device, str(idle_s),
                                 str(socket_path(card))],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=card_env(index, harness.STARTING_ENVIRON), start_new_session=True,
                                cwd=harness.PROJECT_ROOT)


def serve_command(indices: list[int], action: str, device: str = "cuda:0", idle_s: float = 3600.0,
                  wait_s: float = 600.0, echo=print) -> int:
    """``python -m harness serve``: ``action`` "start" (the default), "status" or "stop", for cards ``indices``."""
    cards = [(index, card_label(index)) for index in indices]
    if action == "status":
        for index, card in cards:
            answer = ping(card)
            busy_or_gone = answer.reply is None or "busy" in answer.reply
            echo(f"gpu{index}: " + (answer.why if busy_or_gone else _state(answer.reply)))
        return 0
    if action == "stop":
        for index, card in cards:
            echo(f"gpu{index}: {stop(card)}")
        return 0
    started: dict[str, tuple[int, subprocess.Popen, float]] = {}
    for index, card in cards:
        answer = ping(card)
        if answer.reply is not None and "busy" in answer.reply:
            echo(f"gpu{index}: already warm, busy with a run")
            continue
        if answer.reply is not None and not answer.reply.get("stale"):
            echo(f"gpu{index}: already warm ({_state(answer.reply)})")
            continue
        if answer.reply is not None:  # it serves other code: replace it, unless a run took it meanwhile
            stopped = stop(card)
            if stopped != "stopped":
                echo(f"gpu{index}: its warm worker serves other code and was not replaced: {stopped}")
                continue
        started[card] = (index, start(index, card, device, idle_s), time.time())
    code = 0
    for card, (index, process, since) in started.items():
        while True:
            answer = ping(card)
            if answer.reply is not None and "pid" in answer.reply:
                echo(f"gpu{index}: warm in {time.time() - since:.1f} s ({_state(answer.reply)}); "
                     f"log {worker_log(card)}")
                break
            if process.poll() is not None or time.time() - since > wait_s:
                echo(f"gpu{index}: the warm worker did not start (exit code {process.poll()}); "
                     f"see {worker_log(card)}")
                code = 1
                break
            time.sleep(0.2)
    return code


def _state(reply: dict) -> str:
    stale = f"; serves other code: {reply['stale']}" if reply.get("stale") else ""
    return f"pid {reply.get('pid')}, {reply.get('runs', 0)} run(s) served, up {reply.get('up_s', 0):.0f} s{stale}"


# ---- the warm worker -------------------------------------------------------------------------------------

class WarmWorker:
    def __init__(self, card: str, device: str, idle_s: float, path: Path):
        self.card, self.device, self.idle_s, self.path = card, device, idle_s, path
        self.fingerprint = fingerprint()  # before the imports: a change made while they run makes it stale
        self.started = time.time()
        self.runs = 0
        self.defaults: dict[str, str] = {}

    def warm_up(self) -> None:
        """Import and probe every registered method on the device (a CUDA context on a GPU)."""
        from baselines.registry import listing

        rows = listing(self.device)
        ready = sum(row["available"] for row in rows)
        # what the imports set because it was unset: a run that leaves it unset gets the same in a fresh worker
        self.defaults = {name: value for name, value in os.environ.items()
                         if name not in harness.STARTING_ENVIRON and name.startswith(ENV_PREFIXES)}
        print(f"warm worker pid {os.getpid()} on card {self.card} ({self.device}): {ready} of {len(rows)} methods "
              f"available, warm {time.time() - self.started:.1f} s after start", flush=True)

    def state(self) -> dict:
        return {"pid": os.getpid(), "runs": self.runs, "up_s": round(time.time() - self.started, 1)}

    def serve(self) -> int:
        path = self.path
        private_dir(path.parent)
        path.unlink(missing_ok=True)  # a socket left by a worker that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(8)
        listener.settimeout(self.idle_s)
        print(f"serving on {path}", flush=True)
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    print(f"idle for {self.idle_s:.0f} s: exiting", flush=True)
                    return 0
                except KeyboardInterrupt:  # a cancel that came after its run had ended
                    continue
                with conn:
                    try:
                        if self.handle(conn, path) == "exit":
                            return 0
                    except OSError as exc:  # its client left before the answer: nothing to answer
                        print(f"a client left early ({type(exc).__name__}: {exc})", flush=True)
        finally:
            path.unlink(missing_ok=True)

    def handle(self, conn: socket.socket, path: Path) -> str | None:
        if not same_user(conn):  # the folder is private already; a run is code: never another user's
            print("refused a connection from another user", flush=True)
            return None
        conn.settimeout(HANDSHAKE_S)
        reader = conn.makefile("r")
        try:
            request = json.loads(reader.readline())
        except (OSError, ValueError):
            return None
        conn.settimeout(None)
        reply = lambda message: conn.sendall((json.dumps(message) + "\n").encode())  # noqa: E731
        if time.time() - request.get("sent", 0) > HANDSHAKE_S:  # its sender gave up waiting (a run was on)
            return None
        stale = stale_reason(self.fingerprint, request.get("fingerprint") or {}, self.defaults)
        if request.get("stop"):
            path.unlink(missing_ok=True)  # gone before the answer: a new worker may bind the path at once
            reply({"stopped": os.getpid()})
            return "exit"
        if request.get("ping"):
            reply({**self.state(), **({"stale": stale} if stale else {})})
            return None
        if stale:
            print(f"refused a run: {stale}; exiting", flush=True)
            path.unlink(missing_ok=True)
            reply({"refused": stale, "exits": True})
            return "exit"
        try:  # opened before the answer: the run's parent then moves the log into its run directory
            log = open(request["log"], "a")
        except (OSError, KeyError, TypeError) as exc:
            reply({"refused": f"cannot write the run's log: {exc}", "exits": False})
            return None
        reply(self.state())
        with log:
            code = self.run(request, reader, log)
        self.runs += 1
        with contextlib.suppress(OSError):
            reply({"returncode": code})
        return None if self.healthy() else "exit"

    def run(self, request: dict, reader, log) -> int:
        """One run, its output (Python's and the libraries') in the run's log."""
        from harness.core.spread.run import serve_run

        harness.PROCESS_START_S = time.time()  # the run's start-up counts from its request
        with _output_to(log):
            print(f"warm worker pid {os.getpid()} on card {self.card}: run {self.runs + 1}, "
                  f"up {time.time() - self.started:.0f} s", flush=True)
            try:
                return serve_run(Selection(**request["selection"]), self.device, reader.readline, warm=True)
            except KeyboardInterrupt:
                print("cancelled (SIGINT)", flush=True)
                return 130
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else 1
            except Exception:  # the run failed; the worker stays for the next
                traceback.print_exc()
                return 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()

    def healthy(self) -> bool:
        """Free the run's memory; False when CUDA is in an error state (the worker then exits)."""
        gc.collect()
        if not self.device.startswith("cuda"):
            return True
        import torch

        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as exc:  # a sticky CUDA error: no later run could trust this process
            print(f"CUDA is in an error state after the run ({type(exc).__name__}: {exc}): exiting", flush=True)
            return False
        return True


@contextlib.contextmanager
def _output_to(log):
    """File descriptors 1 and 2 (and so Python's and any library's output) go to ``log`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        print("usage: python -m harness.core.spread.serve CARD DEVICE IDLE_S SOCKET (started by `python -m harness "
              "serve`)", file=sys.stderr)
        return 2
    worker = WarmWorker(argv[0], argv[1], float(argv[2]), Path(argv[3]))
    worker.warm_up()
    return worker.serve()


if __name__ == "__main__":
    harness.exit_now(main())
