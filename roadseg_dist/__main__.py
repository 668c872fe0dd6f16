"""``python -m roadseg_dist``: the ``roadseg`` command, for environments without its script on PATH."""
import sys

from roadseg_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(prog_name="roadseg"))
