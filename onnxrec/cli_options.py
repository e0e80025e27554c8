"""Click options generated from a component's config dataclass, so the CLI and the config never drift.

Every field of a config dataclass carries its help text in ``metadata["help"]`` (write it with
:func:`onnxrec.settings.setting`); a field without one is a programming error, caught by the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import click

from onnxrec.settings import type_name

_LIST_METAVARS = {"comma-separated integers": "INT,...", "comma-separated names": "NAME,..."}


def _show_default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def option_help(f: dataclasses.Field[Any]) -> str:
    """The option's help line: the field's ``metadata["help"]`` and its default."""
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"config field {f.name!r} has no help text (write it with onnxrec.settings.setting)")
    return f"{text} (default: {_show_default(f)})"


def dataclass_options(cls: type, skip: frozenset[str] = frozenset()) -> Callable[[Any], Any]:
    """A decorator adding one ``--option`` per field of ``cls`` (``--flag/--no-flag`` for booleans),
    with the field's help text and its type as the metavar (``INTEGER``, ``FLOAT``, ``TEXT``, ...).

    Every option defaults to None, so only the options given on the command line override the
    defaults, the TOML file and the environment.
    """
    hints = get_type_hints(cls)

    def decorate(func: Any) -> Any:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            if hints[f.name] is bool:
                func = click.option(
                    f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=option_help(f)
                )(func)
            else:
                name = type_name(hints[f.name])
                metavar = _LIST_METAVARS.get(name, name.split(" ")[0].upper())
                func = click.option(flag, f.name, default=None, metavar=metavar, help=option_help(f))(func)
        return func

    return decorate


def config_options(cls: type, table: str) -> Callable[[Any], Any]:
    """A decorator adding ``--config FILE`` (passed as ``config_file``: a TOML file of options, a
    ``[table]`` table or top-level keys) before the options :func:`dataclass_options` makes for ``cls``."""
    config_file = click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        default=None,
        help=f"TOML file of options (a [{table}] table or top-level keys).",
    )
    fields = dataclass_options(cls)
    return lambda func: config_file(fields(func))
