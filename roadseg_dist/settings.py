"""Typed job settings: one dataclass per job, loadable from YAML, its fields mapped 1:1 to CLI flags.

A field ``batch_size`` is the flag ``--batch-size`` and the YAML key ``batch_size``. Precedence is
dataclass default < YAML file (``--config``) < flags given on the command line.

Field metadata understood here (all optional):
    help      help text for ``--help``
    argument  True: a positional CLI argument instead of a flag
    flag      a custom declaration such as ``"--gpu/--cpu"`` for booleans
    choices   allowed values
    parse     a function str -> value (e.g. ``parse_size`` for ``HxW``)
    path      True: a local path is made absolute when the settings are built (on the driver, before
              they travel to Ray); ``file://`` and ``s3://`` URLs are left as they are
    metavar   what ``--help`` shows for the value (default: HxW for sizes, else from the type)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, Callable, TypeVar

import yaml

S = TypeVar("S")

PATH_HELP = "(Relative: to the current dir; under `roadseg submit`, to the job's working dir.)"


class SettingsError(ValueError):
    """A setting's value is wrong: the message names it and says what to write instead.

    Raised by ``build``, the parsers and every settings ``validate()``; only the CLI turns it into a
    usage error (exit code 2), so the same checks run unchanged inside Ray workers and tests.
    """


def field(default: Any = dataclasses.MISSING, *, help: str = "", argument: bool = False,
          flag: str | None = None, choices: tuple | None = None,
          parse: Callable[[str], Any] | None = None, default_factory: Any = dataclasses.MISSING,
          path: bool = False, metavar: str | None = None):
    meta = {"help": help, "argument": argument, "flag": flag, "choices": choices, "parse": parse,
            "path": path, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def parse_size(text: str | tuple | list | None) -> tuple[int, int] | None:
    """``"720x1280"`` -> (720, 1280): height then width."""
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        h, w = text
        return int(h), int(w)
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise SettingsError(f"{text!r} is not a size: write HEIGHTxWIDTH, e.g. 512x1024") from None
    if h <= 0 or w <= 0:
        raise SettingsError(f"{text!r}: height and width must be positive")
    return h, w


def parse_list(text: str | list | tuple | None) -> tuple[str, ...]:
    """``"mask,color"`` -> ("mask", "color")."""
    if text is None:
        return ()
    if isinstance(text, (list, tuple)):
        return tuple(str(t) for t in text)
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


def base_type(tp: Any) -> Any:
    """Optional[int] -> int; other unions are left alone."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(cls, name: str, value: Any) -> Any:
    """A value from YAML, a flag or a caller -> the field's type, strictly: nothing is rounded or
    guessed (2.7 is no int, ``maybe`` no bool), and a field with ``choices`` takes only those."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    parse = f.metadata.get("parse")
    if value is None:
        return None
    if parse is not None:
        try:
            return parse(value)
        except (TypeError, ValueError) as exc:  # SettingsError too: name the setting
            raise SettingsError(f"{_shown(cls, name)}: {exc}") from None
    value = _typed(cls, name, base_type(hints(cls)[name]), value)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SettingsError(f"{_shown(cls, name)}: got {value!r}, expected one of {', '.join(map(str, choices))}")
    return value


_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a text value"}
_NO = object()  # no lossless conversion found


def _typed(cls, name: str, tp: Any, value: Any) -> Any:
    """``value`` as ``tp`` (bool, int, float, str) when it is one without loss; else SettingsError."""
    out: Any = _NO
    if tp not in _WORDS:
        return value
    if tp is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out = value.strip().lower() == "true"
    elif isinstance(value, bool):  # YAML's true is no number and no text
        pass
    elif tp is int:
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            out = int(value)
    elif tp is float:
        number = value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)  # YAML reads 1e-3 (no dot) as text
        if isinstance(number, (int, float)) and math.isfinite(number):
            out = float(number)
    elif tp is str:
        if isinstance(value, str):
            out = value
        elif isinstance(value, (int, float)):
            out = str(value)  # `name: 2024` in YAML
    if out is _NO:
        raise SettingsError(f"{_shown(cls, name)}: got {value!r}, expected {_WORDS[tp]}")
    return out


def _shown(cls, name: str) -> str:
    """How a user knows a setting: its YAML key and its flag (or argument)."""
    return f"{name} ({_cli_name(cls, name)})"


# --- range checks for validate(): each names the flag, the value and what is allowed ---------------

def at_least(obj: Any, low: float, *names: str) -> None:
    """Each named setting that is set must be >= ``low``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < low:
            raise SettingsError(f"{_cli_name(type(obj), name)} must be at least {low}, got {value!r}")


def positive(obj: Any, *names: str) -> None:
    """Each named setting that is set must be > 0."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise SettingsError(f"{_cli_name(type(obj), name)} must be more than 0, got {value!r}")


def within(obj: Any, name: str, low: float, high: float) -> None:
    """The setting, when set, must lie in ``low..high``."""
    value = getattr(obj, name)
    if value is not None and not low <= value <= high:
        raise SettingsError(f"{_cli_name(type(obj), name)} must be within {low}..{high}, got {value!r}")


def load_yaml(path: str) -> dict[str, Any]:
    from roadseg_dist import storage

    try:
        data = yaml.safe_load(storage.read_text(path)) or {}
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def absolute_path(value: Any) -> Any:
    """A plain local path -> absolute (from the current directory); URLs and empty values unchanged."""
    if isinstance(value, (tuple, list)):
        return type(value)(absolute_path(v) for v in value)
    if not isinstance(value, str) or not value or "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_paths(obj: S) -> S:
    """The settings with every ``path`` field made absolute: do this on the driver, where the user's
    working directory is; Ray workers run elsewhere (Ray's session folder, another node)."""
    changes = {f.name: absolute_path(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if f.metadata.get("path")}
    return dataclasses.replace(obj, **changes) if changes else obj


def build(cls: type[S], config: str | dict | None = None, **overrides: Any) -> S:
    """Defaults < YAML (a path or a dict) < overrides whose value is not None; local paths made absolute."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config:
        data = load_yaml(config) if isinstance(config, str) else dict(config)
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)} in {config if isinstance(config, str) else 'config'}; "
                f"known: {', '.join(sorted(names))}")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None and k in names})
    values = {k: _convert(cls, k, v) for k, v in values.items()}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SettingsError("missing required setting(s): " + ", ".join(_cli_name(cls, m) for m in missing)
                               + " (on the command line, or in the --config file)")
    obj = absolute_paths(cls(**values))
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def _cli_name(cls, name: str) -> str:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.metadata.get("argument"):
        return f"argument {name.upper()}"
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


def to_dict(settings: Any) -> dict[str, Any]:
    """Settings -> plain dict for JSON/YAML (tuples become lists)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(settings).items()}


def cli_options(cls) -> Callable:
    """Decorator: one click option (or argument) per field, plus ``--config`` and ``--print-config``.

    The option builder lives with the command line (``cli/options.py``): Ray workers build settings
    without ever importing click."""
    from roadseg_dist.cli.options import cli_options as options

    return options(cls)


# A key that names a secret: its text value is never printed or stored (checkpoint meta, --print-config).
SECRET_KEY = re.compile(r"(?i)(secret|token|passw|credential|access_key|private_key|api_key|apikey|auth)")


def printable(obj: Any) -> dict[str, Any]:
    """Settings -> the plain dict ``--print-config`` writes as YAML: every text value redacted
    (``storage.redact``: credentials in URLs), and a text value under a secret-looking name left out.
    Anything else stays, so the YAML reloads (``--config``) into the same settings."""
    from roadseg_dist import storage

    def clean(v: Any) -> Any:
        if isinstance(v, str):
            return storage.redact(v)
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return {k: clean(v) for k, v in to_dict(obj).items() if not (isinstance(v, str) and SECRET_KEY.search(k))}
