"""``python -m rsfuse`` = the ``rsfuse`` console script."""

import sys

from rsfuse.cli import main

sys.exit(main())
