"""Config dataclasses are the single source of truth: they become CLI flags, and are saved with runs and validated
when a run is loaded.

A field's metadata may carry `help` (flag help text) and `choices`. Supported field types: bool, int, float, str,
and `X | None` of those.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any, TypeVar

from makemore.errors import MakemoreError

T = TypeVar("T")


def field(default: Any, help: str = "", choices: tuple | None = None, names: dict[str, Any] | None = None) -> Any:
    """A dataclass field with a default, a help text for its CLI flag, and optional allowed values.

    `names` gives flag words for special values, e.g. {"auto": 0} lets `--order auto` set an int field to 0.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "names": names})


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, optional?) from an annotation such as `int`, `float | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_scalar(kind: type, optional: bool, name: str, names: dict[str, Any] | None = None):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        if names and text.lower() in names:
            return names[text.lower()]
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag_name(name)} expects {kind.__name__}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag_name(name)} must be finite, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, defaults: Any = None) -> None:
    """Add one `--kebab-case` flag per field of `cls`; `defaults` (an instance) overrides the shown defaults."""
    defaults = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        kind, optional = _field_types(cls)[f.name]
        names = f.metadata.get("names") or {}
        help_text = f"{f.metadata.get('help', '')} (default: {_shown_default(getattr(defaults, f.name), names)})"
        if kind is bool:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=_parse_scalar(kind, optional, f.name, names),
                choices=choices,
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=_metavar(kind, choices, names),
            )


def _shown_default(default: Any, names: dict[str, Any]) -> Any:
    return next((word for word, value in names.items() if value == default), default)


def _metavar(kind: type, choices: tuple | None, names: dict[str, Any]) -> str:
    """What --help shows after a flag: its choices when it has them ({adamw,sgd}), else its type, with any special
    words (INT|auto)."""
    if choices:
        return "{" + ",".join(str(choice) for choice in choices) + "}"
    return "|".join([kind.__name__.upper(), *names])


def from_namespace(cls: type[T], namespace: argparse.Namespace, base: T | None = None) -> T:
    """Build `cls` from the flags the user gave, on top of `base` (or the defaults)."""
    base = base if base is not None else cls()
    given = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    return replace(base, **given)


def replace(config: T, **changes: Any) -> T:
    """`dataclasses.replace` that turns a failed `__post_init__` check into a MakemoreError naming flags."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise MakemoreError(f"unknown setting(s) {', '.join(flag_name(name) for name in unknown)}")
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as error:
        raise MakemoreError(flag_words(str(error), type(config))) from None


def flag_words(message: str, cls: type) -> str:
    """A config check's message with the fields of `cls` named as the flags a user types: 'n_embd must be >= 1' ->
    '--n-embd must be >= 1'. Words already written as flags (--n-embd, add-k) are left alone."""
    names = sorted((f.name for f in dataclasses.fields(cls)), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub(lambda match: flag_name(match.group(1)), message)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: Any, where: str = "config", finite: bool = True) -> T:
    """Validate a JSON object against `cls`: unknown keys, missing keys fall back to defaults, wrong types raise.

    JSON from a file may hold NaN and Infinity: float fields must be finite unless `finite` is False.
    """
    if not isinstance(data, dict):
        raise MakemoreError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = _field_types(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MakemoreError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        kind, optional = known[name]
        if value is None and optional:
            values[name] = None
            continue
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise MakemoreError(f"{where}: field {name} must be {kind.__name__}, got {value!r}")
        if finite and kind is float and not math.isfinite(value):
            raise MakemoreError(f"{where}: field {name} must be finite, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise MakemoreError(f"{where}: {error}") from None


def check(condition: bool, message: str) -> None:
    """For `__post_init__`: config checks raise ValueError, which callers turn into one-line errors."""
    if not condition:
        raise ValueError(message)
