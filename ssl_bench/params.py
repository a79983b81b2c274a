"""Typed, defaulted, validated parameters: one mechanism for methods, backbones, data sets
and the core protocol.

A *parameter set* is declared either as class attributes with type annotations (methods,
the protocol) or as a function signature (backbone and data-set factories). Both become a
list of :class:`Param` and are checked by :func:`validate`, which rejects unknown keys and
values of the wrong type with a message naming the key, the expected type and the choices.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from typing import Any, Callable, Literal, Sequence

from .errors import UserError

ALL = "all"  # the value of a count parameter that means "every available sample"


class Count:
    """Type marker: a non-negative int or the string "all"."""


_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    type: Any
    default: Any = _MISSING
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    help: str = ""
    #: the version that added this parameter: while it is at its default it is left out of run
    #: ids, so results made before it existed keep their ids (None: always in the id)
    since: str | None = None

    @property
    def in_id_at_default(self) -> bool:
        return self.since is None

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        if _is_list(self.type):
            return f"list of {typing.get_args(self.type)[0].__name__}"
        if self.type is Count:
            return 'non-negative int or "all"'
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return getattr(self.type, "__name__", str(self.type))

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` coerced to this parameter's type, or raise UserError."""
        key = f"{where}{self.name}"
        if _is_list(self.type):
            return self._check_list(value, key)
        if isinstance(value, list):
            raise UserError(f"{key} must be {self.type_name()}, got the list {value!r}; to sweep it, "
                            f"put it under [axes]")
        if self.type is Count:
            if isinstance(value, str) and value == ALL:
                return value
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{key} must be a non-negative int or \"all\", got {value!r}")
            if value < 0:
                raise UserError(f"{key} must be a non-negative int or \"all\", got {value}")
            return value
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{key} must be a number, got {value!r}")
            value = float(value)
            if math.isnan(value):
                raise UserError(f"{key} must be a number, got nan")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{key} must be an int, got {value!r}")
        elif self.type is bool:
            if not isinstance(value, bool):
                raise UserError(f"{key} must be true or false, got {value!r}")
        elif self.type is str:
            if not isinstance(value, str):
                raise UserError(f"{key} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{key} must be {self.type_name()}, got {value!r}")
        if self.ge is not None and value < self.ge:
            raise UserError(f"{key} must be >= {self.ge}, got {value}")
        if self.gt is not None and value <= self.gt:
            raise UserError(f"{key} must be > {self.gt}, got {value}")
        if self.le is not None and value > self.le:
            raise UserError(f"{key} must be <= {self.le}, got {value}")
        return value

    def _check_list(self, value: Any, key: str) -> list:
        """A list of ints/floats/strs; a comma-separated string (``"16,32"``, the spelling of
        older grids) is read as the same list."""
        item_type = typing.get_args(self.type)[0]
        if isinstance(value, str) and item_type is not str:
            try:
                value = [item_type(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise UserError(f"{key} must be a list of {item_type.__name__}, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list of {item_type.__name__}, e.g. [16, 32], got {value!r}")
        return [Param(f"{key}[{i}]", item_type, ge=self.ge, gt=self.gt, le=self.le).check(v, "")
                for i, v in enumerate(value)]


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def id_value(value: Any) -> Any:
    """How a setting enters a run id: a list as its comma-joined string, the spelling older
    grids used (``[16, 32]`` and ``"16,32"`` are the same network and the same run)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def hyperparameter(default: Any = _MISSING, *, ge=None, gt=None, le=None, choices=None, help: str = "",
                   since: str | None = None):
    """Declare a class-attribute parameter with constraints, e.g.
    ``visit_weight: float = hyperparameter(1.0, ge=0, help="eq. (5)")``. Give ``since`` (the
    version that adds it) to a parameter added to a published plugin: at its default it stays
    out of run ids, so earlier results keep theirs."""
    return _Declared(default, ge, gt, le, tuple(choices) if choices else None, help, since)


@dataclasses.dataclass(frozen=True)
class _Declared:
    default: Any
    ge: Any
    gt: Any
    le: Any
    choices: Any
    help: str
    since: str | None = None


_SUPPORTED = (int, float, bool, str, Count)


def _normalise_type(annotation: Any, owner: str, name: str) -> tuple[Any, tuple | None]:
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if annotation in _SUPPORTED:
        return annotation, None
    if _is_list(annotation) and typing.get_args(annotation)[0] in (int, float, str):
        return annotation, None
    raise TypeError(f"{owner}.{name}: parameter type {annotation!r} is not supported; "
                    f"use int, float, bool, str, Literal[...], Count or list[int|float|str]")


def params_of_class(cls: type, stop: type) -> list[Param]:
    """Parameters declared as annotated class attributes on ``cls`` and its bases below ``stop``."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is stop or not issubclass(klass, stop):
            continue
        hints.update(typing.get_type_hints(klass, include_extras=False))
    params = []
    for name, annotation in hints.items():
        if name.startswith("_") or typing.get_origin(annotation) is typing.ClassVar:
            continue
        if annotation is typing.ClassVar:
            continue
        raw = getattr(cls, name, _MISSING)
        typ, choices = _normalise_type(annotation, cls.__name__, name)
        if isinstance(raw, _Declared):
            params.append(Param(name, typ, raw.default, raw.ge, raw.gt, raw.le, raw.choices or choices, raw.help,
                                raw.since))
        else:
            params.append(Param(name, typ, raw, choices=choices))
    for klass in cls.__mro__:  # a hyperparameter() without an annotation would be dropped silently
        if klass is stop or not issubclass(klass, stop):
            continue
        for name, value in vars(klass).items():
            if isinstance(value, _Declared) and name not in hints:
                raise UserError(f"{cls.__name__}.{name} = hyperparameter(...) has no type annotation, so it would "
                                f"not be a parameter; write it as `{name}: float = hyperparameter(...)` (or int, "
                                f"bool, str, a Literal, list[int], ...)")
    return params


def params_of_function(fn: Callable, skip: Sequence[str] = ()) -> list[Param]:
    """Parameters of a factory function's keyword arguments (all but those in ``skip``)."""
    hints = typing.get_type_hints(fn)
    params = []
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        typ, choices = _normalise_type(hints.get(name, type(p.default)), fn.__name__, name)
        default = _MISSING if p.default is p.empty else p.default
        since = None
        if isinstance(default, _Declared):  # a factory argument declared with hyperparameter(...)
            declared = default
            default, choices, since = declared.default, declared.choices or choices, declared.since
        params.append(Param(name, typ, default, choices=choices, since=since))
    return params


def validate(params: Sequence[Param], given: dict, where: str) -> dict:
    """Fill defaults, reject unknown keys and wrong types. ``where`` prefixes key names in errors."""
    by_name = {p.name: p for p in params}
    for key in given:
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            close = difflib.get_close_matches(key, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown key {where}{key}{hint}; known keys: {known}")
    out = {}
    for p in params:
        if p.name in given:
            out[p.name] = p.check(given[p.name], where)
        elif p.required:
            raise UserError(f"missing required key {where}{p.name} ({p.type_name()})")
        else:
            out[p.name] = list(p.default) if isinstance(p.default, list) else p.default
    return out


def describe(params: Sequence[Param]) -> str:
    """One line per parameter: name, type, default, help (for `ssl-bench list --verbose`)."""
    lines = []
    for p in params:
        default = "required" if p.required else f"default {p.default!r}"
        lines.append(f"    {p.name}: {p.type_name()}, {default}" + (f"  -- {p.help}" if p.help else ""))
    return "\n".join(lines)
