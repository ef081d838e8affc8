"""``python -m stack``: the command line (see :mod:`stack.cli`)."""

import sys

from stack.cli import main

sys.exit(main())
