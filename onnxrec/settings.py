"""Configuration loading shared by every component: one frozen dataclass per component, built from
its defaults, a TOML file, the environment and CLI options, in that order. Unknown keys and values of
the wrong type are errors, never ignored."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from onnxrec.errors import ConfigError

C = TypeVar("C")


def setting(default: Any, help: str) -> Any:
    """A config dataclass field with its help text (shown by ``--help``; see ``onnxrec.cli_options``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def type_name(typ: Any) -> str:
    """A reader's name for a config field's type: ``integer``, ``number``, ``text``, ``true/false``,
    ``comma-separated integers``, ... (never a Python repr such as ``<class 'int'>``)."""
    origin = typ.__name__ if isinstance(typ, type) else str(typ)
    optional = "None" in origin
    base = origin.replace(" | None", "")
    names = {
        "int": "integer",
        "float": "number",
        "str": "text",
        "bool": "true/false",
        "tuple[int, ...]": "comma-separated integers",
        "tuple[str, ...]": "comma-separated names",
    }
    name = names.get(base, base)
    return f"{name} or none" if optional else name


def _coerce(name: str, typ: Any, value: Any) -> Any:
    origin = typ.__name__ if isinstance(typ, type) else str(typ)
    raw = value
    try:
        if typ is bool or origin == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError(value)
        if typ is int or origin == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float or origin == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if "float | None" in origin:
            return None if value in (None, "", "none", "None") else float(value)
        if "int | None" in origin:
            return None if value in (None, "", "none", "None") else _coerce(name, int, value)
        if "str | None" in origin:
            return None if value in (None, "") else str(value)
        if "tuple[str" in origin or "tuple[int" in origin:
            element = str if "tuple[str" in origin else int
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, list | tuple):
                raise ValueError(value)
            return tuple(element(v) for v in value)
        if typ is str or origin == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"option {name!r}: {raw!r} is not {_article(type_name(typ))}") from exc
    raise ConfigError(f"option {name!r} cannot be set")


def _article(name: str) -> str:
    return name if name.startswith(("comma", "true")) else f"an {name}" if name[0] in "aeiou" else f"a {name}"


def load_config(
    cls: type[C],
    section: str,
    env_prefix: str,
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Build the frozen dataclass ``cls``: defaults <- TOML file (the ``[section]`` table, or top-level
    keys) <- environment (``<env_prefix><NAME>``) <- ``overrides`` (CLI options that were given).
    Unknown keys and values of the wrong type are :class:`ConfigError`."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if toml_path is not None:
        try:
            doc = tomllib.loads(Path(toml_path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{toml_path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})") from exc
        doc = doc.get(section, doc)
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise ConfigError(f"{toml_path}: unknown option(s) {', '.join(unknown)}")
        values.update(doc)
    env = os.environ if environ is None else environ
    for key, raw in env.items():
        if key.startswith(env_prefix):
            name = key[len(env_prefix) :].lower()
            if name not in names:
                raise ConfigError(f"environment variable {key}: unknown option {name!r}")
            values[name] = raw
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown option {key!r}")
        values[key] = value
    return cls(**{k: _coerce(k, hints[k], v) for k, v in values.items()})
