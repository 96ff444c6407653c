"""Measurement and orchestration for hilberta-bench.

Suites (``suites/*.toml``) become cases (problem x method x sliding phase); the runner checks each case
against the exact reference, times the methods of one problem interleaved in rounds, adds power, memory
traffic and locality where asked, and writes ``results/<run-id>/results.json``. Entry point:
``python -m harness`` (see `harness.cli`). The layers are in docs/architecture.md.
"""

import time
from pathlib import Path

# When this process first imported the harness (before torch): a run's start-up cost is counted from here
PROCESS_START_S = time.time()
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (suites/, kernels/configs/, results/)

