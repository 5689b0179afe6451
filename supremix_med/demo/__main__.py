"""``python -m supremix_med.demo <bundle> [--output DIR] [--dry_run]``: see :mod:`supremix_med.demo`."""

import sys

from supremix_med.demo import main

sys.exit(main())
