"""The SPEC: a TOML file naming a unit kind, its fixed settings and the axes of the grid, checked before
anything runs. Every problem is a one-line :class:`~persona_basins.errors.UserError` naming the key.

A value is checked by the setting's own :class:`~persona_basins.config.Constraint` (the field of the kind's
config dataclass), so ``settings.steps = 0`` is refused here with the message the commands give. The grid is
sized before it is expanded (at most :data:`MAX_UNITS` units).
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Constraint
from ...errors import UserError
from .kinds import KINDS, UnitKind
from .kinds.base import is_table

SPEC_KEYS = ("kind", "name", "settings", "axes", "points", "seed_axes", "metric")
MAX_UNITS = 10_000  # grid points per sweep: a larger grid is a typo or a job for several sweeps


@dataclass
class Spec:
    path: Path
    kind: str
    name: str
    settings: dict
    axes: dict[str, list]  # name -> values, in order
    points: list[dict]  # the grid: one dict of axis values per unit
    seed_axes: list[str]
    metric: str

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "settings": self.settings,
            "axes": self.axes,
            "points": self.points,
            "seed_axes": self.seed_axes,
            "metric": self.metric,
        }


def check_value(where: str, value: Any, rule: Constraint | None) -> Any:
    """``value`` checked against ``rule`` (None: a scalar inside a table setting, checked when the unit is
    planned). An integer given for a number is returned as a float; other values as given (JSON-able)."""
    if rule is None:
        ok = isinstance(value, int | float | str) and not (
            isinstance(value, float) and not math.isfinite(value)
        )
        if not ok:
            raise UserError(f"{where}: must be a number, string or boolean, got {value!r}")
        return value
    try:
        coerced = rule.validate(value)
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None
    if isinstance(coerced, float) and not isinstance(value, float):
        return coerced
    return value


def _axis_rule(kind: UnitKind, key: str, settings: dict, where: str) -> Constraint | None:
    """The setting an axis varies: a setting of the kind, or ``table.key`` inside one of its table settings
    (returned as None: the table's entries are checked when the unit is planned)."""
    head, dot, tail = key.partition(".")
    rule = kind.settings.get(head)
    if rule is None or (dot and not is_table(rule)):
        raise UserError(
            f"{where}: unknown axis, not a setting of kind {kind.name!r} "
            f"(known: {', '.join(sorted(kind.settings))})"
        )
    fixed = settings.get(head, {}) if dot else None
    for part in tail.split(".")[:-1] if dot else ():
        fixed = fixed.get(part, {}) if isinstance(fixed, dict) else {}
    if (not dot and head in settings) or (dot and isinstance(fixed, dict) and tail.split(".")[-1] in fixed):
        raise UserError(f"{where}: also fixed in [settings]; give it in one place")
    return None if dot else rule


def _flat_axes(kind: UnitKind, axes_raw: dict) -> dict[str, Any]:
    """``organism_overrides.sft_steps = [...]`` is a nested table in TOML: flatten it to dotted names."""
    flat: dict[str, Any] = {}

    def flatten(prefix: str, table: dict) -> None:
        for sub, values in table.items():
            if isinstance(values, dict):
                flatten(f"{prefix}.{sub}", values)
            else:
                flat[f"{prefix}.{sub}"] = values

    for key, values in axes_raw.items():
        rule = kind.settings.get(key)
        if isinstance(values, dict) and rule is not None and is_table(rule):
            flatten(key, values)
        else:
            flat[key] = values
    return flat


def _check_size(path: Path, sizes: list[int], what: str) -> None:
    total = math.prod(sizes)
    if total > MAX_UNITS:
        raise UserError(
            f"{path}: {what}: the grid has {total:,} units, more than the limit of {MAX_UNITS:,} "
            f"(split it into several sweeps)"
        )


def _parse_axes(path: Path, kind: UnitKind, axes_raw: Any, settings: dict) -> dict[str, list]:
    if not isinstance(axes_raw, dict):
        raise UserError(f"{path}: axes: expected a table, got {axes_raw!r}")
    flat = _flat_axes(kind, axes_raw)
    rules = {key: _axis_rule(kind, key, settings, f"{path}: axes.{key}") for key in flat}
    for key, values in flat.items():
        if not isinstance(values, list):
            raise UserError(f"{path}: axes.{key}: expected a list of values, got {values!r}")
        if not values:
            raise UserError(f"{path}: axes.{key}: empty list (the grid would be empty)")
    _check_size(path, [len(v) for v in flat.values()], "axes")  # before any value is checked or expanded
    axes = {}
    for key, values in flat.items():
        values = [check_value(f"{path}: axes.{key}[{i}]", v, rules[key]) for i, v in enumerate(values)]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"{path}: axes.{key}: repeated values")
        axes[key] = values
    return axes


def _parse_points(path: Path, kind: UnitKind, raw: Any, axes: dict, settings: dict) -> tuple[list, dict]:
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise UserError(f"{path}: points: expected a list of tables such as [{{seed = 0}}, ...]")
    if not raw:
        raise UserError(f"{path}: points: empty list (the grid would be empty)")
    _check_size(path, [len(raw)], "points")
    names = list(axes) or list(raw[0])  # the first point names the axes when [axes] is absent
    rules = {key: _axis_rule(kind, key, settings, f"{path}: points[0].{key}") for key in names}
    points = []
    for i, given in enumerate(raw):
        if set(given) != set(names):
            raise UserError(
                f"{path}: points[{i}]: needs exactly the axes {', '.join(names)}, "
                f"has {', '.join(given) or 'none'}"
            )
        point = {}
        for key in names:
            point[key] = check_value(f"{path}: points[{i}].{key}", given[key], rules[key])
            if key in axes and point[key] not in axes[key]:
                raise UserError(f"{path}: points[{i}].{key}: {point[key]!r} is not among axes.{key}")
        points.append(point)
    if not axes:  # the axes are the values the points take, in order of appearance
        seen = {key: list(dict.fromkeys(json.dumps(p[key], sort_keys=True) for p in points)) for key in names}
        axes = {key: [json.loads(v) for v in values] for key, values in seen.items()}
    keys = [json.dumps(p, sort_keys=True) for p in points]
    if len(set(keys)) != len(keys):
        raise UserError(f"{path}: points: the same point is listed twice")
    return points, axes


def parse_spec(text: str, path: str | Path = "SPEC") -> Spec:
    """Parse and check a SPEC; every problem is a one-line UserError naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML: {error}") from None
    for key in raw:
        if key not in SPEC_KEYS:
            raise UserError(f"{path}: {key}: unknown key (known: {', '.join(SPEC_KEYS)})")
    kind_name = raw.get("kind")
    if kind_name is None:
        raise UserError(f"{path}: kind: missing (one of: {', '.join(KINDS)})")
    if kind_name not in KINDS:
        raise UserError(f"{path}: kind: unknown unit kind {kind_name!r} (known: {', '.join(KINDS)})")
    kind = KINDS[kind_name]
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        raise UserError(f"{path}: name: expected a string, got {name!r}")

    settings = raw.get("settings", {})
    if not isinstance(settings, dict):
        raise UserError(f"{path}: settings: expected a table, got {settings!r}")
    for key, value in settings.items():
        if key not in kind.settings:
            raise UserError(
                f"{path}: settings.{key}: unknown setting (known: {', '.join(sorted(kind.settings))})"
            )
        check_value(f"{path}: settings.{key}", value, kind.settings[key])

    axes = _parse_axes(path, kind, raw.get("axes", {}), settings)
    if "points" in raw:
        points, axes = _parse_points(path, kind, raw["points"], axes, settings)
    else:
        names = list(axes)
        points = [dict(zip(names, combo)) for combo in itertools.product(*(axes[k] for k in names))]

    seed_axes = raw.get("seed_axes")
    if seed_axes is None:
        seed_axes = [k for k in axes if k == "seed" or k.endswith("_seed") or k.endswith(".seed")]
    elif not isinstance(seed_axes, list) or not all(isinstance(k, str) for k in seed_axes):
        raise UserError(f"{path}: seed_axes: expected a list of axis names, got {seed_axes!r}")
    for key in seed_axes:
        if key not in axes:
            raise UserError(f"{path}: seed_axes: {key!r} is not an axis (axes: {', '.join(axes) or 'none'})")
    metric = raw.get("metric", kind.primary_metric)
    if not isinstance(metric, str):
        raise UserError(f"{path}: metric: expected a string, got {metric!r}")
    return Spec(path, kind_name, name, settings, axes, points, list(seed_axes), metric)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return parse_spec(text, path)
