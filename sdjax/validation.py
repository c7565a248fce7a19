"""Type and range checks for the frozen config dataclasses, driven by their annotations.

Every config (`SpecConfig`, `ModelConfig`, drafters, verifiers, training configs)
calls `check_fields(self)` when it is built, so a wrong type (a string where an int
belongs, a bool for a float, a float for an int) or a non-finite float is refused
there, by name, instead of being truncated, ignored or failing deep inside a jit.
`coerce` converts what text formats (YAML, JSON, the command line) legitimately
give: lists for tuples, and YAML 1.1's unquoted `1e-3`, which it reads as a string.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Mapping, Optional, TypeVar

import numpy as np

_NONE = type(None)
T = TypeVar("T")


@functools.lru_cache(maxsize=None)
def field_types(cls) -> dict:
    """The resolved annotation of every field of dataclass `cls`."""
    return typing.get_type_hints(cls)


def _options(hint) -> tuple:
    """The alternatives of a Union / Optional (or the hint itself)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def matches(value, hint) -> bool:
    """Whether `value` is of annotated type `hint` (bools are not numbers here)."""
    if hint is Any:
        return True
    if any(option is not hint for option in _options(hint)):
        return any(matches(value, option) for option in _options(hint))
    if hint is _NONE:
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if hint is int:
        return isinstance(value, (int, np.integer))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
    if origin is not None:  # Dict[...], Callable[...]: the container type only
        return isinstance(value, origin)
    return isinstance(value, hint)


def describe(hint) -> str:
    """A short human name of an annotation: 'int', 'float or None', 'tuple of int'."""
    options = _options(hint)
    if len(options) > 1:
        return " or ".join(describe(o) for o in options)
    if hint is _NONE:
        return "None"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {describe(args[0])}"
        return f"a tuple ({', '.join(describe(a) for a in args)})"
    return getattr(hint, "__name__", str(hint))


def _finite(value) -> bool:
    """False for a NaN or infinite float anywhere in value (tuples included)."""
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    return True


def check_fields(config) -> None:
    """Raises TypeError naming the first field whose value is not of its annotated
    type, and ValueError for a NaN or infinite float."""
    name = type(config).__name__
    hints = field_types(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not matches(value, hints[field.name]):
            raise TypeError(f"{name}.{field.name} must be {describe(hints[field.name])}, "
                            f"got {value!r} ({type(value).__name__})")
        if not _finite(value):
            raise ValueError(f"{name}.{field.name} must be finite, got {value!r}")


def check_range(config, field: str, low: Optional[float] = None,
                high: Optional[float] = None, *, low_open: bool = False) -> None:
    """Raises ValueError unless low <= config.field <= high (low < field if low_open)."""
    value = getattr(config, field)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low}" if high is None else (
            f"in {'(' if low_open else '['}{low}, {high}]" if low is not None
            else f"<= {high}")
        raise ValueError(f"{type(config).__name__}.{field} must be {bounds}, got {value!r}")


def coerce(value, hint):
    """What a text format gives, as the annotation wants it: lists as tuples, YAML
    1.1's unquoted exponent floats ('1e-3') as floats, mappings as nested dataclasses.
    Anything else is returned as it is (and `check_fields` judges it)."""
    options = [o for o in _options(hint) if o is not _NONE]
    if len(options) != 1 or value is None:
        return value
    hint = options[0]
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(coerce(v, inner) for v in value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    return value


def from_dict(cls: typing.Type[T], values: Mapping[str, Any]) -> T:
    """Builds dataclass `cls` from a mapping (a YAML preset, a JSON file): unknown keys
    are refused by name, values coerced as `coerce` says, and the types checked by the
    class itself."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{cls.__name__} needs a mapping of its fields, got "
                        f"{type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(known)}")
    hints = field_types(cls)
    return cls(**{key: coerce(value, hints[key]) for key, value in values.items()})
