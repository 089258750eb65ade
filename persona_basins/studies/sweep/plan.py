"""The plan: one content-addressed unit per grid point, and the dependency units they read, dependencies
first. A unit's id is a hash of its resolved config, so equal settings give the same unit (shared, run once)
and a changed setting a new one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass

from ... import __version__
from ...errors import UserError
from .kinds import KINDS, SettingError, UnitKind
from .kinds.base import default_of
from .spec import Spec


@dataclass
class Unit:
    id: str
    kind: str
    config: dict  # hashed
    runtime: dict  # not hashed
    deps: list[str]
    axes: dict | None = None  # None for dependency units (not a grid point)
    accelerator: bool = False  # Ray reserves --gpus-per-unit for it


@dataclass
class Plan:
    spec: Spec
    grid: list[Unit]  # one per grid point, in grid order (a unit can stand at two points only if equal)
    units: dict[str, Unit]  # every unit to run, dependencies first

    def order(self) -> list[Unit]:
        return list(self.units.values())


def unit_id(kind: str, config: dict) -> str:
    """``<kind>-<16 hex>``: sha256 of the canonical JSON of the resolved config and the package version."""
    blob = json.dumps(
        {"kind": kind, "package_version": __version__, "config": config},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def full_settings(kind: UnitKind, fixed: dict, point: dict) -> dict:
    """Every setting of a unit: the defaults, then the SPEC's [settings], then the grid point's values
    (``table.key`` axes set one entry inside a table setting)."""
    settings = {name: default_of(rule) for name, rule in kind.settings.items()}
    settings.update(json.loads(json.dumps(fixed)))  # a copy: the SPEC's tables are not changed
    settings.update({k: v for k, v in point.items() if "." not in k})
    for key, value in point.items():
        if "." in key:  # an axis inside a table setting (organism_overrides.world.n_topics)
            head, *middle, last = key.split(".")
            table = settings[head]
            for part in middle:
                table[part] = dict(table.get(part) or {})
                table = table[part]
            table[last] = value
    return settings


def _resolve_unit(kind_name: str, settings: dict, units: dict[str, Unit]) -> str:
    kind = KINDS[kind_name]

    def dep(dep_kind: str, dep_settings: dict) -> str:
        return _resolve_unit(dep_kind, full_settings(KINDS[dep_kind], dep_settings, {}), units)

    for name, value in settings.items():
        if value is MISSING:
            raise SettingError(name, f"missing: the {kind_name} kind needs it (no default)")
    resolved = kind.resolve(settings, dep)
    config = json.loads(json.dumps(resolved.config, sort_keys=True))  # canonical: tuples -> lists
    uid = unit_id(kind_name, config)
    if uid not in units:
        units[uid] = Unit(
            id=uid,
            kind=kind_name,
            config=config,
            runtime=dict(resolved.runtime),
            deps=list(resolved.deps),
            accelerator=bool(kind.uses_accelerator(config)),
        )
    return uid


def spec_key(key: str, point: dict) -> str:
    """``axes.KEY`` when the grid point sets the setting, else ``settings.KEY``."""
    from_axis = key in point or any(key.startswith(p + ".") or p.startswith(key + ".") for p in point)
    return f"{'axes' if from_axis else 'settings'}.{key}"


def plan(spec: Spec) -> Plan:
    """The units of ``spec``: each grid point's settings checked by constructing the kind's configs."""
    kind = KINDS[spec.kind]
    units: dict[str, Unit] = {}
    grid = []
    for point in spec.points:
        settings = full_settings(kind, spec.settings, point)
        try:
            uid = _resolve_unit(spec.kind, settings, units)
        except SettingError as error:
            raise UserError(f"{spec.path}: {spec_key(error.key, point)}: {error.problem}") from None
        except UserError as error:
            raise UserError(f"{spec.path}: {error}") from None
        unit = units[uid]
        if unit.axes is not None and unit.axes != point:
            raise UserError(f"{spec.path}: axes: points {unit.axes} and {point} resolve to the same unit")
        unit.axes = dict(point)
        grid.append(unit)
    return Plan(spec=spec, grid=grid, units=units)
