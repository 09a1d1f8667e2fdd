"""``python -m tokenstore``: the ``tokenstore`` command, for when its script is not on PATH."""

import sys

from ._cli import main

sys.exit(main())
