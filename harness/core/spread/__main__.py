"""``python -m harness.core.spread PAYLOAD.json``: one worker of a spread run (`harness.core.spread.run`)."""

import sys

from harness.core.spread.run import main

sys.exit(main())
