"""Click options generated from a component's config dataclass, so the CLI and the config never drift."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click


def _show_default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "()"
    return str(value)


def dataclass_options(cls: type, skip: frozenset[str] = frozenset({"extra"})) -> Callable[[Any], Any]:
    """A decorator adding one ``--option`` per field of ``cls`` (``--flag/--no-flag`` for booleans).

    Every option defaults to None, so only the options given on the command line override the
    defaults, the TOML file and the environment.
    """

    def decorate(func: Any) -> Any:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                func = click.option(
                    f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=f"(default: {f.default})"
                )(func)
            else:
                func = click.option(flag, f.name, default=None, metavar="VALUE", help=f"(default: {_show_default(f)})")(
                    func
                )
        return func

    return decorate
