"""Cluster jobs: ``roadseg submit``."""
from __future__ import annotations

import sys

import click

from roadseg_dist import settings
from roadseg_dist.cli import build, main
from roadseg_dist.extras import require
from roadseg_dist.ops.submit import SubmitSettings

# --- cluster -------------------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@settings.cli_options(SubmitSettings)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(args, config, **values):
    """Run JOB (train, infer, shard, eval, compare, check) on a Ray cluster: roadseg submit JOB -- ARGS...

    Ships roadseg_dist/, jobs/, configs/, pyproject.toml (and README.md) as the job's working
    directory, printing what goes with sizes; sends the S3 endpoint and region of this environment
    but no keys (the nodes use their own; see --pass-credentials); follows the logs; exits with the
    job's own exit code (0 = SUCCEEDED; infer with failed sources: 3), or 1 FAILED / 2 STOPPED when
    the job has none.
    """
    from roadseg_dist.ops import submit as submit_mod

    s = build(SubmitSettings, config, **values)
    require("cluster", "roadseg submit")
    sys.exit(submit_mod.submit(s, args))
