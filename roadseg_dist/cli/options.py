"""The click options of a job's settings dataclass: one per field, plus ``--config`` and ``--print-config``.

A field ``batch_size`` is the flag ``--batch-size``, the YAML key ``batch_size`` and the environment
variable ``ROADSEG_BATCH_SIZE``. Every option defaults to None, so that ``settings.build`` can tell a
value given here from one left out, and the order of precedence is:

    command line  >  ROADSEG_<FLAG> environment variable  >  --config file  >  the dataclass default

(click reads the environment variable in place of a missing flag; ``build`` lets either win over the file.)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import click
from click.shell_completion import CompletionItem

from roadseg_dist import settings

ENV_PREFIX = "ROADSEG_"
PRINT_CONFIG = "roadseg.print_config"  # ctx.meta key: --print-config was given


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class PathOrURL(click.ParamType):
    """A local path (the shell completes it as a file) or a ``file://`` / ``s3://`` URL.

    Nothing is checked here: ``settings.build`` makes local paths absolute and the job names whatever
    is missing, the same way for a flag, an environment variable and a YAML value."""

    name = "path"

    def get_metavar(self, param: click.Parameter, *args: Any) -> str:  # click 8.1 and 8.2+ signatures
        return "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        return [CompletionItem(incomplete, type="file")]


PATH_OR_URL = PathOrURL()


def _remember_print_config(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[PRINT_CONFIG] = True


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _help(f: dataclasses.Field, default: Any, required: bool) -> str:
    meta = f.metadata
    text = meta.get("help", "") + (f" {settings.PATH_HELP}" if meta.get("path") else "")
    if default not in (None, "", (), []):
        shown = "x".join(map(str, default)) if meta.get("parse") is settings.parse_size and default else (
            ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default)
        text = f"{text} [default: {shown}]".strip()
    return f"{text} [required]" if required else text


def _param(cls, f: dataclasses.Field) -> Callable:
    """The click argument or option of one settings field."""
    meta = f.metadata
    tp = settings.base_type(settings.hints(cls)[f.name])
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if meta.get("argument"):
        # never required by click: the value may come from --config; ``build`` checks it
        return click.argument(f.name, required=False, type=PATH_OR_URL if meta.get("path") else None,
                              metavar=f.name.upper() if required else f"[{f.name.upper()}]")
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    common = dict(default=None, envvar=env_name(f.name), help=_help(f, _default(f), required))
    if tp is bool:
        return click.option(flag if "/" in flag else f"{flag}/--no-{flag[2:]}", f.name, **common)
    if meta.get("choices"):
        ptype: Any = click.Choice(meta["choices"])
    elif meta.get("path") and not meta.get("parse"):
        ptype = PATH_OR_URL
    else:
        ptype = tp if tp in (int, float) and not meta.get("parse") else str
    metavar = meta.get("metavar") or ("HxW" if meta.get("parse") is settings.parse_size else
                                      "PATH|URL" if meta.get("path") else None)
    return click.option(flag, f.name, type=ptype, metavar=metavar, **common)


def cli_options(cls) -> Callable:
    """Decorator: one click argument/option per field of ``cls``, plus ``--config`` and ``--print-config``."""
    def decorate(fn: Callable) -> Callable:
        params = [_param(cls, f) for f in dataclasses.fields(cls)]
        params.append(click.option("--config", "config", type=PATH_OR_URL, default=None, metavar="PATH|URL",
                                   help="YAML file of settings (the keys are the flags' names with _); the "
                                        "command line and ROADSEG_<FLAG> variables win over it."))
        params.append(click.option("--print-config", is_flag=True, expose_value=False,
                                   callback=_remember_print_config,
                                   help="Print the settings as resolved (YAML, for --config) and exit."))
        for p in reversed(params):
            fn = p(fn)
        return fn
    return decorate
