"""``python -m waxflow``: the ``waxflow`` command."""

import sys

from waxflow.cli import main

sys.exit(main())
