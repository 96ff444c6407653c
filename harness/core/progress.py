"""A progress bar with an ETA on stderr, without dependencies.

On a terminal one line is redrawn in place; otherwise (CI logs, pipes) every finished step prints a
plain line, so logs stay readable. The ETA assumes the remaining steps take as long as the done ones.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``progress.step("prepare 2048x2048/sdpa_cudnn")`` ... ``progress.advance(note="ok")``."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "", enabled: bool = True,
                 clock=time.monotonic):
        self.total, self.done = max(total, 0), 0
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.enabled, self.clock = label, enabled, clock
        self.start = clock()
        self.current = ""
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        return (self.clock() - self.start) / self.done * (self.total - self.done)

    def _status(self) -> str:
        eta = self.eta_s()
        elapsed = format_duration(self.clock() - self.start)
        return f"{self.done}/{self.total} {elapsed} elapsed, ETA {'?' if eta is None else format_duration(eta)}"

    def _draw(self) -> None:
        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"{self.label} [{bar}] {self._status()}  {self.current}"
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()

    def step(self, what: str) -> None:
        """Say what is running now (redrawn on a terminal; silent in plain mode)."""
        self.current = what
        if self.enabled and self.tty:
            self._draw()

    def advance(self, n: int = 1, note: str = "") -> None:
        """``n`` steps finished; ``note`` is printed with them in plain mode."""
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"{self.label} [{self._status()}] {self.current} {note}".rstrip() + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
        self.stream.write(text + "\n")
        if self.tty:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
