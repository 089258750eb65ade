"""What a unit kind is, and the helpers every kind shares.

A kind's settings are the fields of its config dataclasses (:func:`settings_of`): the sweep checks a value
with the field's own :class:`~persona_basins.config.Constraint` when the SPEC is read, and a unit's settings
by constructing its config dataclasses when the unit is planned (:func:`build`), so a sweep refuses exactly
what the commands refuse. A problem found while planning is a :class:`SettingError` naming the setting;
the plan turns it into ``settings.KEY: ...`` or ``axes.KEY: ...``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....config import Constraint, constraints
from ....errors import ConfigError, UserError

# dep(kind, settings) -> the id of a dependency unit of that kind (planned once, shared)
DepFn = Callable[[str, dict], str]


@dataclass(frozen=True)
class Resolved:
    """A unit resolved from its settings."""

    config: dict  # hashed: everything that determines the unit's numbers
    deps: tuple = ()  # ids of the units this one reads
    runtime: dict = field(default_factory=dict)  # not hashed: where things are (paths move, contents don't)


def _unbounded(name: str) -> tuple[float, float] | None:
    return None


def _cpu_only(config: dict) -> bool:
    return False


@dataclass(frozen=True)
class UnitKind:
    """A kind of unit: its settings table, ``resolve`` (settings -> :class:`Resolved`) and ``run``.

    ``run(config, runtime, unit_dir, deps)`` runs in a worker, writes what it keeps into ``unit_dir`` and
    returns a flat dict of numbers (its metrics); ``deps`` maps each dependency id to its finished folder.
    """

    name: str
    settings: dict[str, Constraint]
    resolve: Callable[[dict, DepFn], Resolved]
    run: Callable[[dict, dict, Path, dict[str, Path]], dict]
    primary_metric: str
    seconds_prior: Callable[[dict], float] | None = None  # rough seconds of a unit before any finished
    metric_bounds: Callable[[str], tuple[float, float] | None] = _unbounded  # the range of a bounded metric
    uses_accelerator: Callable[[dict], bool] = _cpu_only  # Ray reserves --gpus-per-unit for these units


KINDS: dict[str, UnitKind] = {}


def register_kind(kind: UnitKind) -> UnitKind:
    """Add a unit kind (a name already registered is replaced)."""
    KINDS[kind.name] = kind
    return kind


class SettingError(UserError):
    """A bad setting found while planning a unit. ``key`` names it relative to the unit's settings
    (``layer``, ``organism_overrides.world.n_topics``); ``problem`` is the ``must be ...`` part."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")

    def __reduce__(self):
        return type(self), (self.key, self.problem)


# --- settings from config dataclasses ----------------------------------------------------------------------
def settings_of(*classes, exclude: Iterable[str] = ()) -> dict[str, Constraint]:
    """The settings table of a kind: every field of ``classes`` (in order), less ``exclude``."""
    table: dict[str, Constraint] = {}
    skip = set(exclude)
    for cls in classes:
        for name, rule in constraints(cls).items():
            if name in skip:
                continue
            if name in table:
                raise TypeError(f"setting {name!r} is a field of both {table[name].owner} and {rule.owner}")
            table[name] = rule
    return table


def is_table(rule: Constraint) -> bool:
    """Whether a setting is a table (a dict of fields of another config, such as ``organism_overrides``)."""
    return rule.type is dict or typing.get_origin(rule.type) is dict


def default_of(rule: Constraint) -> Any:
    """A setting's default, copied (a ``default_factory`` default is shared by the class); a required
    field's is ``dataclasses.MISSING``."""
    return rule.default if rule.default is dataclasses.MISSING else copy.deepcopy(rule.default)


def pick(settings: dict, cls, exclude: Iterable[str] = ()) -> dict:
    """The settings that are fields of ``cls``."""
    skip = set(exclude)
    return {name: settings[name] for name in constraints(cls) if name in settings and name not in skip}


def _nested_field(cls, owner: str) -> str | None:
    """The field of ``cls`` whose type is the config class named ``owner`` (``world`` for WorldConfig)."""
    for name, rule in constraints(cls).items():
        if getattr(rule.type, "__name__", None) == owner:
            return name
    return None


def build(cls, values: dict, prefix: str = ""):
    """``cls(**values)``: a :class:`ConfigError` becomes a :class:`SettingError` naming ``prefix + field``
    (``prefix + world.field`` for a field of a nested config)."""
    try:
        return cls(**values)
    except ConfigError as error:
        nested = _nested_field(cls, error.owner) if error.owner != cls.__name__ else None
        raise SettingError(f"{prefix}{nested + '.' if nested else ''}{error.field}", error.problem) from None


def check_table(cls, table: dict, prefix: str, *, what: str, exclude: Iterable[str] = ()) -> None:
    """Check each entry of a table setting against the field of ``cls`` it names (recursing into a nested
    config such as ``world``); an unknown name or a bad value is a :class:`SettingError`."""
    rules = {k: v for k, v in constraints(cls).items() if k not in set(exclude)}
    for name, value in table.items():
        if name not in rules:
            raise SettingError(
                f"{prefix}{name}", f"unknown {what} setting (known: {', '.join(sorted(rules))})"
            )
        rule = rules[name]
        if dataclasses.is_dataclass(rule.type) and isinstance(value, dict):
            check_table(rule.type, value, f"{prefix}{name}.", what=what)
            continue
        try:
            rule.validate(value)
        except ValueError as error:
            raise SettingError(f"{prefix}{name}", str(error)) from None


def refuse_unless_default(
    settings: dict, table: dict[str, Constraint], names: Iterable[str], why: str
) -> None:
    """A setting that does not apply (``why``) must keep its default."""
    for name in names:
        if settings[name] != table[name].default:
            raise SettingError(name, f"not used {why}")


# --- identity of what a unit reads --------------------------------------------------------------------------
def _update_from_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _update_from_file(digest, path)
    return digest.hexdigest()


_FOLDER_HASHES: dict[
    tuple, str
] = {}  # per process: (path, sizes, mtimes) -> hash; a grid hashes a folder once


def folder_sha256(path: Path, names: Iterable[str] | None = None) -> str:
    """Content hash of the named files of a folder (default: every file, recursively): each file's path
    relative to the folder, then its bytes. A moved folder keeps its hash; changed contents change it."""
    if names is None:
        names = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    files = [path / name for name in names]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _FOLDER_HASHES:
        digest = hashlib.sha256()
        for name, f in zip(names, files):
            digest.update(name.encode())
            _update_from_file(digest, f)
        _FOLDER_HASHES[stamp] = digest.hexdigest()
    return _FOLDER_HASHES[stamp]


def existing_path(settings: dict, key: str, *, folder: bool) -> Path:
    """The path a setting names, resolved (relative paths are relative to the working directory)."""
    path = Path(settings[key]).expanduser().resolve()
    if not (path.is_dir() if folder else path.is_file()):
        raise SettingError(key, f"{'folder' if folder else 'file'} not found: {path}")
    return path


# --- metrics ------------------------------------------------------------------------------------------------
def as_metrics(result) -> dict:
    """The metrics dict of what a study's ``run_*`` returned (a result object with ``.metrics`` or a dict)."""
    metrics = getattr(result, "metrics", None)
    if metrics is None and isinstance(result, dict):
        metrics = result.get("metrics", result)
    return metrics


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    if isinstance(value, dict):  # a stored interval: its mean
        return _number(value.get("mean"))
    return None


def flat_numbers(metrics: dict, keys: Iterable[str]) -> dict:
    """The headline numbers of a study's metrics: ``key`` for a number or an interval's mean,
    ``key_sub`` for each entry of a table of them (``return_rate_by_variant_sampled``). Undefined ones are
    left out (a table cell counts only the units that have the number)."""
    out = {}
    for key in keys:
        value = metrics.get(key)
        number = _number(value)
        if number is not None:
            out[key] = number
        elif isinstance(value, dict) and "mean" not in value:
            for sub, item in value.items():
                number = _number(item)
                if number is not None:
                    out[f"{key}_{sub}"] = number
    return out


def table_setting(owner: str, name: str, help: str) -> Constraint:
    """A table setting (a dict of another config's fields, ``{}`` by default)."""
    return Constraint(owner, name, dict, {}, help)
