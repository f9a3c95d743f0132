"""``python -m metricstream``: the same as the ``metricstream`` command."""

import sys

from .cli import main

sys.exit(main())
