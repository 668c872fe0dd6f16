"""``python -m roadseg_dist.cli``: the same as the ``roadseg`` command."""
import sys

from roadseg_dist.cli import main

sys.exit(main())
