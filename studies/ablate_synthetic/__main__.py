"""``python -m studies.ablate_synthetic [flags]`` (from the repository root)."""

import sys

from studies.ablate_synthetic.runner import main

sys.exit(main())
