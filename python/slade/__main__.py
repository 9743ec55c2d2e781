"""``python -m slade``: the ``slade`` command (see :mod:`slade.cli`)."""

import sys

from .cli import main

sys.exit(main())
