"""``python -m pneumocnn``: the command line."""

import sys

from pneumocnn.cli import main

sys.exit(main())
