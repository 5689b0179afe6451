"""``python -m supremix_med.cli``: the ``supremix-med`` command (see :mod:`supremix_med.cli`)."""

import sys

from supremix_med.cli import main

sys.exit(main())
