"""``python -m supremix_med.compare``: see :mod:`supremix_med.compare`."""

import sys

from supremix_med.compare.cli import main

sys.exit(main())
