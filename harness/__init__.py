"""Measurement and orchestration for hilberta-bench.

Suites (``suites/*.toml``) become cases (problem x method x sliding phase); the runner checks each case
against the exact reference, times the methods of one problem interleaved in rounds, adds power, memory
traffic and locality where asked, and writes ``results/<run-id>/results.json``. Entry point:
``python -m harness`` (see `harness.cli`). The layers are in docs/architecture.md.
"""

import logging
import os
import sys
import time
from pathlib import Path

# When this process first imported the harness (before torch): a run's start-up cost is counted from here. A warm
# worker (`harness.core.spread.serve`) sets it to when each run was asked of it: its start-up is that run's.
PROCESS_START_S = time.time()
# The environment as the process got it, before any module set its own defaults (a warm worker serves only runs
# started with the same: `harness.core.spread.warm.fingerprint`)
STARTING_ENVIRON = dict(os.environ)
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (suites/, kernels/configs/, results/)



def exit_now(code: int) -> None:
    """End a ``python -m`` process with ``code`` once its output is flushed, skipping the interpreter's
    teardown. Measured on an H200 host (2026-11-28): after a GPU run that teardown took 4-11 s (a worker of
    a --gpus run 5.3 s, a one-GPU bench-ci 3.8 s) and did nothing a run needs: every results file is
    written atomically and closed before this, and the GPU, its memory and any compile workers are
    released by the driver and the OS when the process ends."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say on it
            pass
    os._exit(code)
