"""One declarative check for every config dataclass: help and constraints live in the field's metadata.

Each setting is declared once, with its default, its help and its range (the shape of scikit-learn's
``_parameter_constraints`` and PEFT's ``field(metadata={"help": ...})``); the value type is the field's
annotation. ``__post_init__`` calls :func:`check`, which validates and coerces every field and raises a
one-line :class:`~persona_basins.errors.ConfigError` naming ``Class.field``::

    @dataclass(frozen=True)
    class FinetuneConfig:
        lr: float = param(3e-3, gt=0, help="Adam learning rate")

        def __post_init__(self):
            check(self)

The command-line flags (``commands/args.add_field_flag``) and the sweep's settings are built from the same
:class:`Constraint`, so a range is written in one place.

Types understood (from ``typing.get_type_hints``): ``int`` (``bool`` refused), ``float`` (an integer is
accepted and stored as a float; NaN and infinities refused), ``bool``, ``str``, ``Path`` (a string is
converted), ``X | None`` (None allowed), ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``list[X]`` (a list or tuple,
each item checked against X and the bounds), ``dict``, a dataclass (a nested config; a dict is converted with
its ``from_dict``), any other class (an instance of it) and ``Any``. Bounds (``ge``/``gt``/``le``/``lt``)
apply to numbers; ``choices`` restricts the value, or, for a field that is a number or a string (``int |
str``), the string values (``workers: int | str``: an integer >= 1 or ``"auto"``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import MISSING
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Constraint", "ConfigError", "check", "constraint", "constraints", "param"]

_METADATA_KEY = "persona_basins"  # field.metadata[_METADATA_KEY]: the constraint's keyword arguments


def param(
    default=MISSING, *, help: str, ge=None, gt=None, le=None, lt=None, choices=None, default_factory=MISSING
) -> dataclasses.Field:
    """A dataclass field carrying its help text and its constraints (checked by :func:`check`)."""
    if not help:
        raise TypeError("param() needs a help text")
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("param() takes at most one lower bound (ge or gt) and one upper bound (le or lt)")
    rule = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    rule["choices"] = None if choices is None else tuple(choices)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"help": help, _METADATA_KEY: rule}
    )


# --- the type of a field, reduced to what the check needs -----------------------------------------------
def _members(annotation) -> tuple[tuple, bool]:
    """The annotation's non-None members and whether None is allowed (``X | None``, ``Optional[X]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return tuple(a for a in args if a is not type(None)), type(None) in args
    return (annotation,), False


def _is_number_type(kind) -> bool:
    return kind in (int, float)


def _show(value) -> str:
    """A value as the message shows it: numbers plainly (``0``, ``nan``), everything else by repr."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _format_number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What one config field accepts: its type, default, help, bounds and choices.

    ``validate(value)`` returns the value coerced (an int given for a float becomes a float, a list given for
    a tuple becomes a tuple) or raises ``ValueError("must be ..., got ...")``; ``describe()`` is the
    ``...`` part (``"a finite number > 0"``, ``"one of 'plain', 'inoculated'"``).
    """

    owner: str
    name: str
    type: Any
    default: Any
    help: str
    ge: Any = None
    gt: Any = None
    le: Any = None
    lt: Any = None
    choices: tuple | None = None

    @property
    def kinds(self) -> tuple:
        """The non-None types the field accepts (``(int, str)`` for ``int | str | None``)."""
        return _members(self.type)[0]

    @property
    def optional(self) -> bool:
        """Whether None is accepted (the annotation is ``X | None``)."""
        return _members(self.type)[1]

    # --- the description ---------------------------------------------------------------------------------
    def _bounds_text(self) -> str:
        low = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if low and high:
            opening = "[" if low[0] == ">=" else "("
            closing = "]" if high[0] == "<=" else ")"
            return f" in {opening}{_format_number(low[1])}, {_format_number(high[1])}{closing}"
        if low or high:
            sign, bound = low or high
            return f" {sign} {_format_number(bound)}"
        return ""

    def _choices_text(self) -> str:
        shown = [repr(choice) for choice in self.choices]
        return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)

    def _describe_kind(self, kind, *, with_choices: bool) -> str:
        if with_choices and self.choices is not None:
            return self._choices_text()
        if kind is int:
            return "an integer" + self._bounds_text()
        if kind is float:
            return "a finite number" + self._bounds_text()
        if kind is bool:
            return "True or False"
        if kind is str:
            return "a string"
        if kind is Path:
            return "a path"
        if kind is Any or kind is object:
            return "any value"
        origin = typing.get_origin(kind)
        if origin in (tuple, list):
            args = typing.get_args(kind)
            if origin is tuple and args and args[-1] is not Ellipsis:
                items = ", ".join(self._describe_kind(arg, with_choices=with_choices) for arg in args)
                return f"a list of {len(args)} items ({items})"
            item = self._describe_kind(args[0] if args else Any, with_choices=with_choices)
            return f"a list whose items are each {item}"
        if kind is dict or origin is dict:
            return "a table (dict)"
        if isinstance(kind, type):
            return f"a {kind.__name__}"
        return str(kind)

    def describe(self) -> str:
        """What the field accepts, e.g. ``"a finite number > 0"`` or ``"an integer >= 1 or None"``."""
        kinds, optional = _members(self.type)
        mixed = any(_is_number_type(k) for k in kinds) and str in kinds
        if mixed and self.choices is not None:  # int | str: the numbers by bounds, the strings by choices
            parts = [self._describe_kind(k, with_choices=False) for k in kinds if k is not str]
            parts.append(self._choices_text())
        else:
            parts = [self._describe_kind(k, with_choices=True) for k in kinds]
        if optional:
            parts.append("None")
        return " or ".join(parts)

    # --- the check ---------------------------------------------------------------------------------------
    def _in_bounds(self, number) -> bool:
        return not (
            (self.ge is not None and not number >= self.ge)
            or (self.gt is not None and not number > self.gt)
            or (self.le is not None and not number <= self.le)
            or (self.lt is not None and not number < self.lt)
        )

    def _coerce(self, kind, value, *, with_choices: bool):
        """``value`` as ``kind`` (coerced), or raise ``TypeError`` when it is not one."""
        if with_choices and self.choices is not None and typing.get_origin(kind) not in (tuple, list):
            value = self._coerce(kind, value, with_choices=False)
            if value not in self.choices:
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError
            value = float(value)
        elif kind is bool or kind is str:
            if not isinstance(value, kind):
                raise TypeError
            return value
        elif kind is Path:
            if not isinstance(value, str | os.PathLike):
                raise TypeError
            return Path(value)
        elif kind is Any or kind is object:
            return value
        elif typing.get_origin(kind) in (tuple, list):
            return self._coerce_sequence(kind, value, with_choices=with_choices)
        elif kind is dict or typing.get_origin(kind) is dict:
            if not isinstance(value, dict):
                raise TypeError
            return value
        elif dataclasses.is_dataclass(kind) and isinstance(value, dict):
            return self._nested(kind, value)
        elif isinstance(kind, type):
            if not isinstance(value, kind):
                raise TypeError
            return value
        if not self._in_bounds(value):
            raise TypeError
        return value

    @staticmethod
    def _nested(kind, table: dict):
        """A nested config built from a dict (its own ConfigError, naming its own field, passes through)."""
        from_dict = getattr(kind, "from_dict", None)
        try:
            return from_dict(table) if from_dict else kind(**table)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:  # an unknown key
            raise ValueError(f"must be a {kind.__name__}: {error}") from None

    def _coerce_sequence(self, kind, value, *, with_choices: bool):
        if not isinstance(value, tuple | list):
            raise TypeError
        args = typing.get_args(kind) or (Any, Ellipsis)
        if typing.get_origin(kind) is list:
            args = (args[0], Ellipsis)
        if args[-1] is Ellipsis:
            items = [self._coerce(args[0], item, with_choices=with_choices) for item in value]
        else:
            if len(value) != len(args):
                raise TypeError
            items = [self._coerce(arg, item, with_choices=with_choices) for arg, item in zip(args, value)]
        return list(items) if typing.get_origin(kind) is list else tuple(items)

    def validate(self, value):
        """``value`` coerced to the field's type, or ``ValueError("must be <describe()>, got <value>")``."""
        kinds, optional = _members(self.type)
        if value is None:
            if optional:
                return None
        else:
            mixed = any(_is_number_type(k) for k in kinds) and str in kinds
            for kind in kinds:
                try:
                    return self._coerce(kind, value, with_choices=not mixed or kind is str)
                except TypeError:
                    continue
        raise ValueError(f"must be {self.describe()}, got {_show(value)}")


# --- the fields of a class ------------------------------------------------------------------------------
def constraints(cls) -> dict[str, Constraint]:
    """Every field of the config dataclass ``cls`` (or of an instance's class) as a :class:`Constraint`.

    A ``default_factory`` field's ``default`` is one value the factory made (shared: do not mutate it)."""
    return dict(_constraints(cls if isinstance(cls, type) else type(cls)))


@cache  # one table per class: get_type_hints is slow and check() runs on every construction
def _constraints(cls) -> dict[str, Constraint]:
    hints = typing.get_type_hints(cls)
    table = {}
    for field in dataclasses.fields(cls):
        rule = dict(field.metadata.get(_METADATA_KEY) or {"help": field.metadata.get("help", "")})
        if field.default is not MISSING:
            default = field.default
        elif field.default_factory is not MISSING:
            default = field.default_factory()
        else:
            default = MISSING  # a required field
        table[field.name] = Constraint(cls.__name__, field.name, hints[field.name], default, **rule)
    return table


def constraint(cls, name: str) -> Constraint:
    """The :class:`Constraint` of ``cls.name`` (``KeyError`` naming the class when there is no such field)."""
    cls = cls if isinstance(cls, type) else type(cls)
    table = _constraints(cls)
    if name not in table:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return table[name]


def check(obj) -> None:
    """Validate every field of the config dataclass ``obj``, storing coerced values (frozen classes too).

    Raises :class:`~persona_basins.errors.ConfigError` naming the first bad ``Class.field``."""
    for name, rule in _constraints(type(obj)).items():
        value = getattr(obj, name)
        try:
            coerced = rule.validate(value)
        except ConfigError:  # from a nested config given as a dict: it names its own field
            raise
        except ValueError as error:
            raise ConfigError(rule.owner, name, str(error)) from None
        if coerced is not value:
            object.__setattr__(obj, name, coerced)
