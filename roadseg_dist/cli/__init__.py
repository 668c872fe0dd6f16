"""The ``roadseg`` command line: one subcommand per job, each a thin call into the package.

Options come from each job's settings dataclass (``settings.cli_options``, built in ``cli/options.py``),
so a flag, its YAML key, its ``ROADSEG_<FLAG>`` variable and the dataclass field are the same name.
The package raises its own errors (``errors.py``); this module alone turns them into click errors, in
``Command.invoke`` below.

stdout holds a command's results and nothing else, so a script can parse them: while a command runs,
whatever is printed (progress, Ray's own lines, a library's chatter) goes to stderr; the results are
written with ``result`` / ``results_console`` once the work is done.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Any, TypeVar

import click

from roadseg_dist import __version__, settings
from roadseg_dist.errors import user_errors
from roadseg_dist.cli.options import PRINT_CONFIG

S = TypeVar("S")
RESULTS = "roadseg.results"  # ctx.meta key: the stream results go to (stdout as the command started)


def set_verbose(ctx: click.Context | None, param: Any, verbose: bool) -> None:
    """``-v``, before the command or anywhere after it: our debug lines, not every S3 request's headers."""
    from roadseg_dist.ops.cluster import WIRE_LOGGERS, redact_log_records

    redact_log_records()  # before anything logs: no key, token or signed header leaves in a log line
    if ctx is not None and ctx.meta.get("roadseg.verbose"):
        return  # `-v` was given already (before the command): keep it
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # (kept if a handler is there)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in WIRE_LOGGERS if verbose else ():
        logging.getLogger(name).setLevel(logging.INFO)
    if ctx is not None and verbose:
        ctx.meta["roadseg.verbose"] = True
        os.environ["ROADSEG_VERBOSE"] = "1"  # the workers of a local Ray inherit it (cluster.setup_worker)


def verbose_option() -> click.Option:
    return click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=set_verbose,
                        envvar="ROADSEG_VERBOSE", help="Show debug logs (here or before the command).")


def result(line: str = "") -> None:
    """One line of the command's results, to stdout (progress and logs go to stderr)."""
    ctx = click.get_current_context(silent=True)
    click.echo(line, file=ctx.meta.get(RESULTS) if ctx is not None else None)


def results_console():
    """A rich Console that prints to the results' stdout (tables)."""
    from rich.console import Console

    ctx = click.get_current_context(silent=True)
    return Console(file=ctx.meta.get(RESULTS) if ctx is not None else None)


def build(cls: type[S], config: str | None, **values: Any) -> S:
    """``settings.build``; with ``--print-config``, print the settings as YAML to stdout and exit 0.

    The YAML is ``settings.printable``: redacted, and reloadable with ``--config`` into the same settings."""
    import yaml

    s = settings.build(cls, config, **values)
    ctx = click.get_current_context()
    if ctx.meta.get(PRINT_CONFIG):
        click.echo(yaml.safe_dump(settings.printable(s), sort_keys=False).rstrip("\n"), file=ctx.meta.get(RESULTS))
        ctx.exit(0)
    return s


class Command(click.Command):
    """A subcommand that takes ``-v`` too, runs with stdout sent to stderr (only ``result`` lines reach
    stdout), whose settings errors are usage errors (exit 2) and whose user errors are ``Error:
    message`` (exit 1); anything else reaches the group's last line of defence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(verbose_option())

    def invoke(self, ctx: click.Context):
        from roadseg_dist import storage
        from roadseg_dist.ops.cluster import our_error

        ctx.meta.setdefault(RESULTS, sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - ours (also inside Ray's task errors) or re-raised
            err = our_error(exc) or exc  # a Ray task's error arrives wrapped, its str() a traceback
            if isinstance(err, settings.SettingsError):
                raise click.UsageError(str(err), ctx) from None
            if isinstance(err, user_errors()):
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
@click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=set_verbose, envvar="ROADSEG_VERBOSE",
              help="Show debug logs (also after the command).")
def main() -> None:
    """Train BDD100K road-scene segmentation on Ray and segment video archives in bulk.

    \b
    Settings: command line > ROADSEG_<FLAG> environment variable (--batch-size: ROADSEG_BATCH_SIZE)
    > --config FILE.yaml > default; --print-config shows what a command would run with.
    Results go to stdout; progress and logs to stderr.
    """


# Each module adds its commands to ``main``.
from roadseg_dist.cli import cluster, data, infer, train  # noqa: E402,F401
