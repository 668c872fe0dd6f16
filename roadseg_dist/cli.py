"""The ``roadseg`` command line: one subcommand per job, each a thin call into the package.

Options come from each job's settings dataclass (``settings.cli_options``), so a flag, its YAML key
and the dataclass field are the same name.
"""
from __future__ import annotations

import logging
import sys

import click

from roadseg_dist import __version__, settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="roadseg")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """Train BDD100K road-scene segmentation on Ray and segment video archives in bulk."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --- data (issue: sharding) ----------------------------------------------------------------------
# --- models (issue: model zoo) -------------------------------------------------------------------
# --- train ---------------------------------------------------------------------------------------
# --- infer ---------------------------------------------------------------------------------------
# --- eval / compare / demo -----------------------------------------------------------------------
# --- cluster -------------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
