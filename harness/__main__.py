"""``python -m harness ...``: the command line (see `harness.cli`); the exit skips the interpreter's teardown
(`harness.exit_now`)."""

from harness import exit_now
from harness.cli import main

exit_now(main())
