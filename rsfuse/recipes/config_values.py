"""Settings and their values: `Option` (type, default, doc, range), `option` (a dataclass field declaring one) and
`check_value` (a value converted to the setting's type and checked, or `ConfigError` naming the key). Used by the
loader in `rsfuse.recipes.config`."""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ConfigError", "Option", "option", "check_value", "describe_type"]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key (and the file when one is involved)."""


@dataclass(frozen=True)
class Option:
    """What a setting allows: its annotation, default, doc, and for numbers the range (``ge``/``gt`` lower bound
    inclusive/exclusive, ``le``/``lt`` upper bound; every entry of a list is checked), for lists their length."""

    type: Any
    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None

    def bounds(self) -> str:
        """The declared range as text (``">= 1"``, ``">= 0 and < 1"``); ``""`` when there is none."""
        parts = [f"{op} {value:g}" for op, value in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if value is not None]
        return " and ".join(parts)

    def check_range(self, value: int | float) -> str | None:
        """Why ``value`` is outside the range (None when it is inside)."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if inside else f"must be {self.bounds()}"

    @property
    def nullable(self) -> bool:
        return _is_union(self.type) and type(None) in typing.get_args(self.type)

    @property
    def scalar(self) -> Any:
        """The annotation without ``None`` (``float | None`` → ``float``)."""
        if _is_union(self.type):
            members = [member for member in typing.get_args(self.type) if member is not type(None)]
            return members[0] if len(members) == 1 else self.type
        return self.type


def option(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, length: int | None = None) -> Any:
    """A dataclass field for a setting: default, the doc ``--help`` shows, and the allowed range."""
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "length": length}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


# ---------------------------------------------------------------------------------------------------- values

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def describe_type(hint: Any) -> str:
    if hint is bool:
        return "true/false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        inner = {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values") if args else "values"
        return f"a list of {inner}"
    if origin is dict or hint is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if _is_union(hint):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    pass


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` says, or `_Mismatch`."""
    if hint is Any:
        return value
    if _is_union(hint):
        members = typing.get_args(hint)
        if value is None:
            if type(None) in members:
                return None
            raise _Mismatch
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        raise _Mismatch
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Mismatch
        try:
            return int(value)
        except ValueError:
            raise _Mismatch from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Mismatch
        try:
            return float(value)
        except ValueError:
            raise _Mismatch from None
    if hint is str:
        if isinstance(value, (dict, list, tuple)):
            raise _Mismatch
        return str(value)
    if origin in (list, tuple):
        items = [item.strip() for item in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _Mismatch
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis] or [Any]
        converted = [_convert(item, args[0]) for item in items]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
        raise _Mismatch
    raise _Mismatch


def check_value(key: str, value: Any, spec: Option, origin: str = "") -> Any:
    """``value`` converted to the setting's type and checked against its range and length; `ConfigError` naming the
    key (and the origin) otherwise."""
    where = f" (in {origin})" if origin else ""
    if value is None and not spec.nullable and spec.type is not Any:
        raise ConfigError(f"config key {key!r}{where}: null is not allowed; expected {describe_type(spec.scalar)}")
    try:
        result = _convert(value, spec.type)
    except _Mismatch:
        if typing.get_origin(spec.scalar) is Literal:
            raise ConfigError(f"config key {key!r}{where}: {value!r} is not one of "
                              f"{', '.join(map(str, typing.get_args(spec.scalar)))}") from None
        raise ConfigError(f"config key {key!r}{where}: expected {describe_type(spec.type)}, got {value!r}") from None
    if isinstance(result, (list, tuple)):
        if spec.length is not None and len(result) != spec.length:
            raise ConfigError(f"config key {key!r}{where}: expected a list of {spec.length} entries, got {value!r}")
        for item in result:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                problem = spec.check_range(item)
                if problem is not None:
                    raise ConfigError(f"config key {key!r}{where}: every entry {problem}, got {value!r}")
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        problem = spec.check_range(result)
        if problem is not None:
            raise ConfigError(f"config key {key!r}{where}: {problem}, got {value!r}")
    return result
