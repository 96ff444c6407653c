"""``python -m harness.core.spread SELECTION DEVICE``: one worker of a spread run (`harness.core.spread.run.main`;
its payload's path comes on stdin)."""

from harness import exit_now
from harness.core.spread.run import main

exit_now(main())
