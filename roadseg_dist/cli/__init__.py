"""The ``roadseg`` command line: one subcommand per job, each a thin call into the package.

Options come from each job's settings dataclass (``settings.cli_options``), so a flag, its YAML key
and the dataclass field are the same name. The package raises its own errors (``errors.py``); this
module alone turns them into click errors, in ``Command.invoke`` below.
"""
from __future__ import annotations

import logging
import traceback

import click

from roadseg_dist import __version__, settings


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors whose message is meant for the user as it is (exit code 1)."""
    from roadseg_dist.data.bdd100k import DatasetError
    from roadseg_dist.errors import JobError
    from roadseg_dist.infer.pipeline import InputError
    from roadseg_dist.models.checkpoint import CheckpointError
    from roadseg_dist.images import ImageTooLarge
    from roadseg_dist.resources import ResourceError
    from roadseg_dist.retries import StorageError
    from roadseg_dist.watchdog import StallError

    return (DatasetError, CheckpointError, InputError, JobError, ResourceError, StallError, StorageError,
            ImageTooLarge, FileNotFoundError)


class Command(click.Command):
    """A subcommand whose settings errors are usage errors (exit 2) and whose user errors are
    ``Error: message`` (exit 1); anything else reaches the group's last line of defence."""

    def invoke(self, ctx: click.Context):
        from roadseg_dist import storage
        from roadseg_dist.cluster import our_error

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - ours (also inside Ray's task errors) or re-raised
            err = our_error(exc) or exc  # a Ray task's error arrives wrapped, its str() a traceback
            if isinstance(err, settings.SettingsError):
                raise click.UsageError(str(err), ctx) from None
            if isinstance(err, _user_errors()):
                raise click.ClickException(storage.redact(str(err))) from None
            raise


class Group(click.Group):
    """Every error leaves redacted: a click error's message, and any unexpected exception as one
    line (its traceback, redacted too, only with -v), so no credential-bearing URL is echoed."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        from roadseg_dist.storage import redact

        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = redact(exc.message)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                click.echo(redact(traceback.format_exc()), err=True)
            raise click.ClickException(redact(f"{type(exc).__name__}: {exc}") + "\n  (unexpected; "
                                       "run with -v for the traceback, secrets redacted)") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="roadseg")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """Train BDD100K road-scene segmentation on Ray and segment video archives in bulk."""
    from roadseg_dist.cluster import WIRE_LOGGERS, redact_log_records

    redact_log_records()  # before anything logs: no key, token or signed header leaves in a log line
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in WIRE_LOGGERS if verbose else ():  # -v: our debug lines, not every S3 request's headers
        logging.getLogger(name).setLevel(logging.INFO)


# Each module adds its commands to ``main``.
from roadseg_dist.cli import cluster, data, infer, train  # noqa: E402,F401
