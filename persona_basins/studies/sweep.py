"""Sweeps: grids of units (organism builds, EM fine-tunes, ...) run resumably on a process pool or on Ray.

A SPEC is a TOML file::

    kind = "em"                      # the unit kind (KINDS below)
    [settings]                       # fixed settings of every unit
    preset = "tiny"
    steps = 300
    [axes]                           # the grid is the cartesian product of the axes ...
    seed = [0, 1]
    condition = ["plain", "inoculated"]
    # ... or a listed subset:  points = [{seed = 0, condition = "plain"}, ...]

Every unit is *content-addressed*: its folder ``RUN/units/<kind>-<hash>/`` is named by a hash of its fully
resolved config (package version, every setting with defaults filled in, and the fingerprint of the
organism it reads), so a finished unit is never re-run, a changed setting makes a new unit, and a rerun of
the same SPEC resumes. A unit is written in a temp folder and renamed into place when finished; only a
folder with ``unit.json`` counts. Units that need an organism built from a preset depend on an
``organism`` unit, built once and shared.

Unit kinds plug in through :func:`register_kind`: a table of settings (name -> type and default), a
``resolve`` function (settings -> the hashed config, the dependency units, the run-time paths) and a
``run`` function executed in a worker. Workers are a process pool on this machine (``local``) or Ray
tasks (``ray``); either way a unit is seeded by its own config, never by its position or worker, so the
numbers are the same whatever the backend and worker count.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import socket
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from ..results import RunDir, prepare_out_dir, write_json
from ..stats import ci95, rate_interval

SPEC_KEYS = ("kind", "name", "settings", "axes", "points", "seed_axes", "metric")
UNIT_FILE = "unit.json"  # its presence marks a finished unit (written last, inside the temp folder)
TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------------------
# unit kinds


@dataclass(frozen=True)
class Setting:
    type: type  # int, float, bool, str or dict
    default: Any
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None


@dataclass(frozen=True)
class Resolved:
    config: dict  # hashed: everything that determines the unit's numbers
    deps: tuple = ()  # ids of the units this one reads (from the ``dep`` callback of ``resolve``)
    runtime: dict = field(default_factory=dict)  # not hashed: where things are (paths move, contents don't)


@dataclass(frozen=True)
class UnitKind:
    name: str
    settings: dict[str, Setting]
    # (settings with defaults filled in, dep(kind, settings) -> id of a dependency unit) -> Resolved
    resolve: Callable[[dict, Callable[[str, dict], str]], Resolved]
    run: Callable[
        [dict, dict, Path, dict[str, Path]], dict
    ]  # (config, runtime, unit_dir, dep dirs) -> metrics
    primary_metric: str
    seconds_prior: Callable[[dict], float] | None = None  # (config) -> rough seconds before any unit finished
    metric_bounds: Callable[[str], tuple[float, float] | None] = lambda name: (
        None
    )  # range of a metric, if bounded


KINDS: dict[str, UnitKind] = {}


def register_kind(kind: UnitKind) -> UnitKind:
    """Add a unit kind (basins, llc and eigenform units plug in here)."""
    KINDS[kind.name] = kind
    return kind


def _organism_settings() -> dict[str, Setting]:
    return {
        "preset": Setting(str, "tiny", "organism preset", choices=("tiny", "default")),
        "seed": Setting(int, 0, "organism (world and training) seed", minimum=0),
        "overrides": Setting(
            dict, {}, "OrganismConfig fields that replace the preset's (pretrain_steps, ...)"
        ),
    }


def _organism_config(preset: str, seed: int, overrides: dict, where: str):
    from ..models.organism import OrganismConfig, preset_config

    fields = {f.name: f for f in dataclasses.fields(OrganismConfig)}
    for k, v in overrides.items():
        if k in ("preset", "seed") or k not in fields:
            known = sorted(set(fields) - {"preset", "seed"})
            raise UserError(f"{where}.{k}: unknown organism setting (known: {', '.join(known)})")
        d = fields[k].default
        want = dict if k == "world" else type(d)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            if not (want is float and isinstance(v, int) and not isinstance(v, bool)):
                raise UserError(f"{where}.{k}: expected {_type_name(want)}, got {v!r}")
    try:
        return preset_config(preset, seed=seed, **overrides)
    except (TypeError, ValueError) as e:  # an unknown key or a value out of range inside the world table
        raise UserError(f"{where}: {e}") from None


def _resolve_organism(s: dict, dep) -> Resolved:
    cfg = _organism_config(s["preset"], s["seed"], s["overrides"], "settings.overrides")
    return Resolved(config={"organism": cfg.to_dict()})


def _run_organism(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ..models.organism import OrganismConfig
    from .organism import build_organism

    out = build_organism(OrganismConfig.from_dict(config["organism"]), unit_dir / "organism", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _em_settings() -> dict[str, Setting]:
    from ..train.finetune import CONDITIONS, FinetuneConfig

    s = {
        "organism": Setting(
            str, "", "an organism folder to fine-tune (instead of building one from a preset)"
        ),
        "preset": Setting(
            str, "tiny", "organism preset when no organism folder is given", choices=("tiny", "default")
        ),
        "organism_seed": Setting(int, 0, "organism seed when no organism folder is given", minimum=0),
        "organism_overrides": Setting(dict, {}, "OrganismConfig fields that replace the preset's"),
    }
    helps = {
        "condition": "fine-tuning condition",
        "layer": "layer of the adapter",
        "module": "module in the layer",
        "rank": "LoRA rank",
        "full": "full fine-tune instead of LoRA",
        "steps": "fine-tuning steps",
        "seed": "fine-tuning seed (also the sampling seed of the readout)",
    }
    for f in dataclasses.fields(FinetuneConfig):  # every fine-tuning setting, with the library's defaults
        kind = type(f.default)
        s[f.name] = Setting(
            kind,
            f.default,
            helps.get(f.name, f.name.replace("_", " ")),
            choices=CONDITIONS if f.name == "condition" else None,
            minimum=0 if kind in (int, float) else None,
        )
    return s


def organism_fingerprint(path: str | Path) -> str:
    """Content hash of an organism folder (weights, world, settings): moves keep it, retraining changes it."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("model.safetensors", "world.json", "config.json"):
        f = path / name
        if not f.is_file():
            raise UserError(f"settings.organism: not an organism folder: {f} is missing")
        h.update(name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _resolve_em(s: dict, dep) -> Resolved:
    from ..train.finetune import FinetuneConfig

    ft = FinetuneConfig(**{f.name: s[f.name] for f in dataclasses.fields(FinetuneConfig)})
    config: dict = {"finetune": ft.to_dict(), "readout": "em_readout"}
    if s["organism"]:
        for k in ("organism_seed", "organism_overrides"):
            if s[k] != KINDS["em"].settings[k].default:
                raise UserError(f"settings.{k}: not used with settings.organism (a built organism folder)")
        path = Path(s["organism"]).expanduser().resolve()
        config["organism"] = {"fingerprint": organism_fingerprint(path)}
        return Resolved(config=config, runtime={"organism_path": str(path)})
    _organism_config(s["preset"], s["organism_seed"], s["organism_overrides"], "settings.organism_overrides")
    # The organism is identified by its own unit id: the hash of its fully resolved config.
    org = dep(
        "organism", {"preset": s["preset"], "seed": s["organism_seed"], "overrides": s["organism_overrides"]}
    )
    config["organism"] = {"unit": org}
    return Resolved(config=config, deps=(org,))


_ORGANISMS: dict[str, Any] = {}  # per worker process: organism folders already loaded


def _load_organism_cached(path: str):
    from ..models.organism import load_organism

    if path not in _ORGANISMS:
        _ORGANISMS.clear()  # one at a time: a sweep over organism seeds must not pile them up in memory
        _ORGANISMS[path] = load_organism(path)
    return _ORGANISMS[path]


def _run_em(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ..measure.persona import em_readout
    from ..train.finetune import FinetuneConfig, finetune, training_context

    path = runtime.get("organism_path") or str(next(iter(deps.values())) / "organism")
    org = _load_organism_cached(path)
    cfg = FinetuneConfig(**config["finetune"])
    res = finetune(org.model, org.world, org.vocab, cfg, out_dir=unit_dir / "adapter")
    r = em_readout(res.model, org.world, org.vocab, sample_seed=cfg.seed)
    base = em_readout(org.model, org.world, org.vocab)  # the organism before fine-tuning: the baseline
    out = {
        "broad_misalignment": r["broad_misalignment"],
        "broad_misalignment_base": base["broad_misalignment"],
        "broad_misalignment_excess": r["broad_misalignment"] - base["broad_misalignment"],
        "broad_harm": r["broad_harm"],
        "broad_harm_excess": r["broad_harm"] - base["broad_harm"],
        "wellformed": r["wellformed"],
        "narrow_rate": r["narrow_rate"][training_context(cfg.condition)],
        "final_loss": res.losses[-1],
    }
    out.update({f"narrow_rate_{ctx}": v for ctx, v in r["narrow_rate"].items()})
    if "sampled" in r:
        out["sampled_misalignment"] = r["sampled"]["misaligned"]
    return out


def _em_prior(config: dict) -> float:
    return 1.0 + 0.006 * config["finetune"]["steps"]  # tiny organism on one core; larger ones take longer


def _organism_prior(config: dict) -> float:
    c = config["organism"]
    return (0.025 if c["preset"] == "tiny" else 0.12) * (c["pretrain_steps"] + c["sft_steps"])


ORGANISM_RATES = {
    "aligned_rate",
    "in_context_persona_acc",
    "misaligned_mass",
    "routine_max_tv",
    "routine_overlap",
    "toxic_recoverable",
    "toxic_recoverable_mass",
    "wellformed_rate",
}


def _em_bounds(name: str) -> tuple[float, float] | None:
    if name.endswith("_excess"):
        return (-1.0, 1.0)  # a difference of two rates
    if name == "final_loss":
        return None
    return (0.0, 1.0)  # every other EM metric is an exact mass or a sampled share


register_kind(
    UnitKind(
        "organism",
        _organism_settings(),
        _resolve_organism,
        _run_organism,
        primary_metric="aligned_rate",
        seconds_prior=_organism_prior,
        metric_bounds=lambda name: (0.0, 1.0) if name in ORGANISM_RATES else None,
    )
)
register_kind(
    UnitKind(
        "em",
        _em_settings(),
        _resolve_em,
        _run_em,
        primary_metric="broad_misalignment",
        seconds_prior=_em_prior,
        metric_bounds=_em_bounds,
    )
)


# --------------------------------------------------------------------------------------------------
# spec parsing and grid expansion


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


def _type_name(t: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        dict: "a table",
        object: "a number, string or boolean",
    }[t]


def _check_value(where: str, value: Any, st: Setting) -> Any:
    ok = isinstance(value, st.type) and not (st.type is int and isinstance(value, bool))
    if st.type is object:
        ok = isinstance(value, int | float | str)
    if st.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: expected {_type_name(st.type)}, got {value!r}")
    if st.choices is not None and value not in st.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, st.choices))}")
    if st.minimum is not None and value < st.minimum:
        raise UserError(f"{where}: must be >= {st.minimum}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: must be finite, got {value!r}")
    return value


SCALAR = Setting(
    object, None
)  # a value inside a table setting (organism_overrides.sft_steps): checked on resolve


def _axis_setting(kind: UnitKind, key: str, settings: dict, where: str) -> Setting:
    """The setting an axis varies: a setting of the kind, or ``table.key`` inside one of its table settings."""
    head, dot, tail = key.partition(".")
    st = kind.settings.get(head)
    if st is None or (dot and st.type is not dict):
        raise UserError(
            f"{where}: unknown axis, not a setting of kind {kind.name!r} "
            f"(known: {', '.join(sorted(kind.settings))})"
        )
    fixed = settings.get(head, {}) if dot else None
    for part in tail.split(".")[:-1] if dot else ():
        fixed = fixed.get(part, {}) if isinstance(fixed, dict) else {}
    if (not dot and head in settings) or (dot and isinstance(fixed, dict) and tail.split(".")[-1] in fixed):
        raise UserError(f"{where}: also fixed in [settings]; give it in one place")
    return SCALAR if dot else st


def _unknown(where: str, key: str, known) -> UserError:
    return UserError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(known))})")


def parse_spec(text: str, path: str | Path = "SPEC") -> Spec:
    """Parse and validate a SPEC; every problem is a one-line UserError naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    for k in raw:
        if k not in SPEC_KEYS:
            raise UserError(f"{path}: {k}: unknown key (known: {', '.join(SPEC_KEYS)})")
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
    for k, v in settings.items():
        if k not in kind.settings:
            raise UserError(f"{path}: {_unknown('settings', k, kind.settings)}")
        _check_value(f"{path}: settings.{k}", v, kind.settings[k])

    axes_raw = raw.get("axes", {})
    if not isinstance(axes_raw, dict):
        raise UserError(f"{path}: axes: expected a table, got {axes_raw!r}")
    axes: dict[str, list] = {}
    flat: dict[str, Any] = {}

    def flatten(prefix: str, table: dict) -> None:  # organism_overrides.sft_steps = [...] is a nested table
        for sub, v in table.items():
            if isinstance(v, dict):
                flatten(f"{prefix}.{sub}", v)
            else:
                flat[f"{prefix}.{sub}"] = v

    for k, vals in axes_raw.items():
        st = kind.settings.get(k)
        if isinstance(vals, dict) and st is not None and st.type is dict:
            flatten(k, vals)
        else:
            flat[k] = vals
    for k, vals in flat.items():
        st = _axis_setting(kind, k, settings, f"{path}: axes.{k}")
        if not isinstance(vals, list):
            raise UserError(f"{path}: axes.{k}: expected a list of values, got {vals!r}")
        if not vals:
            raise UserError(f"{path}: axes.{k}: empty list (the grid would be empty)")
        vals = [_check_value(f"{path}: axes.{k}[{i}]", v, st) for i, v in enumerate(vals)]
        if len({json.dumps(v, sort_keys=True) for v in vals}) != len(vals):
            raise UserError(f"{path}: axes.{k}: repeated values")
        axes[k] = vals

    if "points" in raw:
        pts = raw["points"]
        if not isinstance(pts, list) or not all(isinstance(p, dict) for p in pts):
            raise UserError(f"{path}: points: expected a list of tables such as [{{seed = 0}}, ...]")
        if not pts:
            raise UserError(f"{path}: points: empty list (the grid would be empty)")
        names = list(axes) or list(pts[0])  # the first point names the axes when [axes] is absent
        points = []
        for i, p in enumerate(pts):
            if set(p) != set(names):
                raise UserError(
                    f"{path}: points[{i}]: needs exactly the axes {', '.join(names)}, has "
                    f"{', '.join(p) or 'none'}"
                )
            pt = {}
            for k in names:
                st = _axis_setting(kind, k, settings, f"{path}: points[{i}].{k}")
                pt[k] = _check_value(f"{path}: points[{i}].{k}", p[k], st)
                if k in axes and pt[k] not in axes[k]:
                    raise UserError(f"{path}: points[{i}].{k}: {pt[k]!r} is not among axes.{k}")
            points.append(pt)
        if not axes:
            axes = {k: list(dict.fromkeys(json.dumps(p[k], sort_keys=True) for p in points)) for k in names}
            axes = {k: [json.loads(v) for v in vs] for k, vs in axes.items()}
        keys = [json.dumps(p, sort_keys=True) for p in points]
        if len(set(keys)) != len(keys):
            raise UserError(f"{path}: points: the same point is listed twice")
    else:
        names = list(axes)
        points = [dict(zip(names, combo)) for combo in itertools.product(*(axes[k] for k in names))]

    seed_axes = raw.get("seed_axes")
    if seed_axes is None:
        seed_axes = [k for k in axes if k == "seed" or k.endswith("_seed")]
    elif not isinstance(seed_axes, list) or not all(isinstance(k, str) for k in seed_axes):
        raise UserError(f"{path}: seed_axes: expected a list of axis names, got {seed_axes!r}")
    for k in seed_axes:
        if k not in axes:
            raise UserError(f"{path}: seed_axes: {k!r} is not an axis (axes: {', '.join(axes) or 'none'})")
    metric = raw.get("metric", kind.primary_metric)
    if not isinstance(metric, str):
        raise UserError(f"{path}: metric: expected a string, got {metric!r}")
    return Spec(
        path=path,
        kind=kind_name,
        name=name,
        settings=settings,
        axes=axes,
        points=points,
        seed_axes=list(seed_axes),
        metric=metric,
    )


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return parse_spec(text, path)


# --------------------------------------------------------------------------------------------------
# the plan: content-addressed units and their dependencies


@dataclass
class Unit:
    id: str
    kind: str
    config: dict  # hashed
    runtime: dict  # not hashed
    deps: list[str]
    axes: dict | None = None  # None for dependency units (not a grid point)


def unit_id(kind: str, config: dict) -> str:
    """``<kind>-<16 hex>``: sha256 of the canonical JSON of the resolved config and the package version."""
    blob = json.dumps(
        {"kind": kind, "package_version": __version__, "config": config},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _full_settings(kind: UnitKind, fixed: dict, point: dict) -> dict:
    s = {k: st.default for k, st in kind.settings.items()}
    s.update(fixed)
    s.update({k: v for k, v in point.items() if "." not in k})
    for k, st in kind.settings.items():
        if st.type is dict:
            s[k] = dict(s[k])
    for k, v in point.items():
        if "." in k:  # an axis inside a table setting (organism_overrides.world.n_topics)
            head, *mid, last = k.split(".")
            t = s[head]
            for m in mid:
                t[m] = dict(t.get(m) or {})
                t = t[m]
            t[last] = v
    return s


def _resolve_unit(kind_name: str, settings: dict, units: dict[str, Unit]) -> str:
    def dep(dep_kind: str, dep_settings: dict) -> str:
        return _resolve_unit(dep_kind, _full_settings(KINDS[dep_kind], dep_settings, {}), units)

    res = KINDS[kind_name].resolve(settings, dep)
    config = json.loads(json.dumps(res.config, sort_keys=True))  # canonical: tuples -> lists
    uid = unit_id(kind_name, config)
    if uid not in units:
        units[uid] = Unit(
            id=uid, kind=kind_name, config=config, runtime=dict(res.runtime), deps=list(res.deps)
        )
    return uid


@dataclass
class Plan:
    spec: Spec
    grid: list[Unit]  # one per grid point, in grid order (a unit can stand at two points only if equal)
    units: dict[str, Unit]  # every unit to run, dependencies first

    def order(self) -> list[Unit]:
        return list(self.units.values())


def plan(spec: Spec) -> Plan:
    kind = KINDS[spec.kind]
    units: dict[str, Unit] = {}
    grid = []
    for point in spec.points:
        s = _full_settings(kind, spec.settings, point)
        try:
            uid = _resolve_unit(spec.kind, s, units)
        except UserError as e:
            raise UserError(f"{spec.path}: {e}") from None
        u = units[uid]
        if u.axes is not None and u.axes != point:
            raise UserError(f"{spec.path}: axes: points {u.axes} and {point} resolve to the same unit")
        u.axes = dict(point)
        grid.append(u)
    return Plan(spec=spec, grid=grid, units=units)


# --------------------------------------------------------------------------------------------------
# running one unit (in a worker)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def execute_unit(task: dict) -> dict:
    """Run one unit in this process; write it in a temp folder and rename it into place when finished.

    Returns ``{"id", "status": "done"|"failed", "metrics", "seconds", "error"}``. A failure is caught and
    recorded (one line in the result, the traceback in ``RUN/failed/<id>/error.txt``), never raised, so
    a backend retries a unit only when its worker process dies.
    """
    import contextlib

    run_dir = Path(task["run_dir"])
    units_dir = run_dir / "units"
    final = units_dir / task["id"]
    if (final / UNIT_FILE).is_file():
        return _finished_record(final)
    try:
        import torch

        torch.set_num_threads(1)  # one thread per worker: same numbers whatever the worker count
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    tmp = units_dir / f"{TMP_PREFIX}{task['id']}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    write_json(tmp / "worker.json", {"pid": os.getpid(), "host": socket.gethostname()})
    t0 = time.perf_counter()
    kind = KINDS[task["kind"]]
    deps = {d: units_dir / d for d in task["deps"]}
    error = None
    try:
        with (
            open(tmp / "log.txt", "w", encoding="utf-8") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            print(
                f"unit {task['id']} ({task['kind']}) on {socket.gethostname()} pid {os.getpid()}", flush=True
            )
            try:
                metrics = kind.run(task["config"], task["runtime"], tmp, deps)
            except Exception as e:  # noqa: BLE001 - any failure of a unit is recorded, the sweep goes on
                error = _one_line(e)
                traceback.print_exc()
            print(
                f"{'failed: ' + error if error else 'done'} in {time.perf_counter() - t0:.1f} s", flush=True
            )
    except BaseException:  # interrupted: leave nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    if error is not None:
        failed = run_dir / "failed" / task["id"]
        shutil.rmtree(failed, ignore_errors=True)
        failed.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "error.txt").write_text(error + "\n", encoding="utf-8")
        tmp.rename(failed)
        return {"id": task["id"], "status": "failed", "error": error, "seconds": seconds, "metrics": {}}
    (tmp / "worker.json").unlink()
    write_json(
        tmp / UNIT_FILE,
        {
            "id": task["id"],
            "kind": task["kind"],
            "package_version": __version__,
            "config": task["config"],
            "deps": task["deps"],
            "metrics": metrics,
            "seconds": seconds,
        },
    )
    try:
        tmp.rename(final)
    except OSError:  # another worker finished the same unit first (a retried task): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / UNIT_FILE).is_file():
            raise
    shutil.rmtree(run_dir / "failed" / task["id"], ignore_errors=True)
    return _finished_record(final)


def _finished_record(final: Path) -> dict:
    u = json.loads((final / UNIT_FILE).read_text())
    return {
        "id": u["id"],
        "status": "done",
        "metrics": u["metrics"],
        "seconds": u.get("seconds"),
        "error": None,
    }


# --------------------------------------------------------------------------------------------------
# backends: submit a task, wait for some to finish


class InlineBackend:
    """One unit after another in this process (``--workers 1``): the sequential baseline."""

    name = "inline"
    slots = 1

    def __init__(self):
        self._done: dict[int, dict] = {}
        self._n = 0

    def submit(self, task: dict):
        self._n += 1
        self._done[self._n] = execute_unit(task)
        return self._n

    def wait(self, handles: list, timeout: float) -> list:
        return [h for h in handles if h in self._done]

    def result(self, handle) -> dict:
        return self._done.pop(handle)

    def cancel(self, handles) -> None:
        pass

    def close(self, abort: bool = False) -> None:
        pass


class LocalBackend:
    """A process pool on this machine (spawned workers, one torch thread each)."""

    name = "local"

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.slots = workers  # no queue beyond the workers: --fail-fast and Ctrl-C stop promptly
        self.pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        )

    def submit(self, task: dict):
        return self.pool.submit(execute_unit, task)

    def wait(self, handles: list, timeout: float) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(handles, timeout=timeout, return_when=FIRST_COMPLETED).done)

    def result(self, handle) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()
        except BrokenProcessPool as e:
            raise UserError(f"a worker process died ({e}); rerun to resume") from None

    def cancel(self, handles) -> None:
        for h in handles:
            h.cancel()

    def close(self, abort: bool = False) -> None:
        if not abort:
            self.pool.shutdown(wait=True, cancel_futures=True)
            return
        # Interrupted or --fail-fast: stop the running units now rather than wait for them. The executor has
        # no public way to stop a running call before Python 3.14 (terminate_workers), hence _processes.
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)


def _worker_init() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"


class RayBackend:
    """Ray tasks: a local single-node cluster on 127.0.0.1, or ``ray.init(address=...)`` for a running one.

    A unit's folder is written by the worker that runs it, so on a multi-node cluster RUN must be on a
    file system every node sees (NFS, a cluster file system). ``max_retries`` reruns a unit whose worker
    process died (out of memory, a killed node); a unit that raises is recorded as failed, not retried.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None,
        workers: int | None,
        cpus_per_unit: float,
        gpus_per_unit: float,
        max_retries: int,
    ):
        try:
            import ray
        except ImportError:
            raise UserError('the ray backend needs Ray: pip install -e ".[ray]"') from None
        self.ray = ray
        self.owned = False
        env = {"env_vars": {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}}
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, runtime_env=env)
                else:
                    n = workers if workers else os.cpu_count() or 1
                    # results are small dicts: a small object store, not Ray's default 30% of memory
                    ray.init(
                        num_cpus=int(math.ceil(n * cpus_per_unit)),
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        object_store_memory=256 * 1024**2,
                        log_to_driver=False,
                        runtime_env=env,
                    )
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"--address {address}" if address else "a local Ray cluster"
                raise UserError(f"cannot start or reach {where}: {_one_line(e)}") from None
            self.owned = True
        total = ray.cluster_resources()
        if gpus_per_unit and total.get("GPU", 0) < gpus_per_unit:
            raise UserError(
                f"--gpus-per-unit {gpus_per_unit}: the Ray cluster has {total.get('GPU', 0):g} GPUs"
            )
        if cpus_per_unit > total.get("CPU", 0):
            raise UserError(
                f"--cpus-per-unit {cpus_per_unit}: the Ray cluster has {total.get('CPU', 0):g} CPUs"
            )
        # enough tasks in flight to fill the cluster (twice over, for nodes that join), not the whole grid
        fit = total.get("GPU", 0) / gpus_per_unit if gpus_per_unit else total.get("CPU", 0) / cpus_per_unit
        self.slots = max(1, 2 * int(fit))
        self.remote = ray.remote(execute_unit).options(
            num_cpus=cpus_per_unit, num_gpus=gpus_per_unit, max_retries=max_retries, retry_exceptions=False
        )

    def submit(self, task: dict):
        return self.remote.remote(task)

    def wait(self, handles: list, timeout: float) -> list:
        done, rest = self.ray.wait(handles, num_returns=1, timeout=timeout, fetch_local=False)
        if done and rest:  # and every other one that is ready too
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def result(self, handle) -> dict:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as e:  # the worker died more often than max_retries allows
            return {
                "status": "failed",
                "error": _one_line(e).split(" (")[0][:300],
                "metrics": {},
                "seconds": None,
            }

    def cancel(self, handles) -> None:
        for h in handles:
            try:
                self.ray.cancel(h, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    def close(self, abort: bool = False) -> None:
        if self.owned:
            self.ray.shutdown()


def make_backend(
    backend: str,
    *,
    workers: int | None,
    address: str | None = None,
    cpus_per_unit: float = 1,
    gpus_per_unit: float = 0,
    max_retries: int = 3,
):
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if cpus_per_unit <= 0:
        raise UserError(f"--cpus-per-unit must be > 0, got {cpus_per_unit}")
    if gpus_per_unit < 0:
        raise UserError(f"--gpus-per-unit must be >= 0, got {gpus_per_unit}")
    if backend == "local":
        if address:
            raise UserError("--address is for --backend ray")
        if gpus_per_unit:
            raise UserError("--gpus-per-unit is for --backend ray")
        if cpus_per_unit != 1:
            raise UserError("--cpus-per-unit is for --backend ray (local workers run one thread each)")
        n = workers or os.cpu_count() or 1
        return InlineBackend() if n == 1 else LocalBackend(n)
    if backend == "ray":
        return RayBackend(
            address=address,
            workers=workers,
            cpus_per_unit=cpus_per_unit,
            gpus_per_unit=gpus_per_unit,
            max_retries=max_retries,
        )
    raise UserError(f"--backend: unknown backend {backend!r} (local or ray)")


# --------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Outcome:
    status: str  # done | failed | pending | cancelled
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None
    resumed: bool = False  # finished before this invocation


class _Lock:
    """One sweep at a time per RUN folder (released by the OS when the process dies)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".sweep.lock"

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "w")  # noqa: SIM115 - held for the whole sweep
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise UserError(f"another sweep is running in {self.path.parent}") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _clean_tmp(units_dir: Path) -> None:
    if units_dir.is_dir():
        for d in units_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)


def done_units(run_dir: Path, p: Plan) -> dict[str, Outcome]:
    out = {}
    for uid in p.units:
        f = run_dir / "units" / uid / UNIT_FILE
        if f.is_file():
            r = _finished_record(f.parent)
            out[uid] = Outcome("done", r["metrics"], None, r["seconds"], resumed=True)
    return out


def estimate_seconds(run_dir: Path, p: Plan, done: dict[str, Outcome], workers: int) -> dict:
    """Rough wall time of the units still to run: median time of finished units of each kind, else a prior."""
    import statistics

    per_kind: dict[str, list[float]] = {}
    for uid, o in done.items():
        if o.seconds is not None:
            per_kind.setdefault(p.units[uid].kind, []).append(o.seconds)
    total, basis = 0.0, {}
    for u in p.units.values():
        if u.id in done:
            continue
        if per_kind.get(u.kind):
            total += statistics.median(per_kind[u.kind])
            basis[u.kind] = "finished units"
        elif KINDS[u.kind].seconds_prior is not None:
            total += KINDS[u.kind].seconds_prior(u.config)
            basis.setdefault(u.kind, "rough prior, no unit of this kind finished yet")
    return {"seconds": total / max(1, workers), "basis": basis}


def run_sweep(
    spec: Spec,
    out: str | Path,
    *,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_unit: float = 1,
    gpus_per_unit: float = 0,
    max_retries: int = 3,
    fail_fast: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Run (or resume) the grid of ``spec`` into ``out``; returns the sweep record written to sweep.json.

    With ``dry_run`` nothing is run or written: the record lists the grid, what is already done and an
    estimate of the time left. The local backend spawns its workers, so a script that calls this with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard (the CLI has it).
    """
    p = plan(spec)
    run_dir = Path(out)
    done = done_units(run_dir, p) if run_dir.is_dir() else {}
    n_workers = workers or os.cpu_count() or 1
    if dry_run:
        est = estimate_seconds(run_dir, p, done, n_workers)
        outcomes = {uid: done.get(uid, Outcome("pending")) for uid in p.units}
        return {**sweep_record(p, outcomes), "estimate": est}
    run_dir = prepare_out_dir(run_dir)
    units_dir = run_dir / "units"
    units_dir.mkdir(exist_ok=True)
    outcomes: dict[str, Outcome] = {uid: done.get(uid, Outcome("pending")) for uid in p.units}
    with _Lock(run_dir):
        _clean_tmp(units_dir)  # leftovers of a killed run never count
        be = make_backend(
            backend,
            workers=workers,
            address=address,
            cpus_per_unit=cpus_per_unit,
            gpus_per_unit=gpus_per_unit,
            max_retries=max_retries,
        )
        aborted = True  # until _schedule returns normally
        try:
            _schedule(p, run_dir, be, outcomes, fail_fast=fail_fast, progress=progress)
            aborted = any(o.status == "cancelled" for o in outcomes.values())
        finally:
            be.close(abort=aborted)
            _clean_tmp(units_dir)
            for uid, o in outcomes.items():  # units that finished after the scheduler stopped listening
                if o.status != "done" and (units_dir / uid / UNIT_FILE).is_file():
                    r = _finished_record(units_dir / uid)
                    outcomes[uid] = Outcome("done", r["metrics"], None, r["seconds"])
            record = sweep_record(p, outcomes)
            record["backend"] = {
                "name": be.name,
                "workers": workers,
                "address": address,
                "cpus_per_unit": cpus_per_unit,
                "gpus_per_unit": gpus_per_unit,
            }
            write_results(run_dir, record)
    failed = [u for u in record["units"] + record["dependencies"] if u["status"] == "failed"]
    if fail_fast and failed:
        raise UserError(
            f"unit {failed[0]['id']} failed: {failed[0]['error']} (--fail-fast: stopped the sweep)"
        )
    return record


def _schedule(
    p: Plan, run_dir: Path, be, outcomes: dict[str, Outcome], *, fail_fast: bool, progress: bool
) -> None:
    from tqdm.auto import tqdm

    waiting = [u for u in p.order() if outcomes[u.id].status != "done"]
    running: dict[Any, str] = {}
    counts = {"done": sum(o.status == "done" for o in outcomes.values()), "failed": 0}
    bar = tqdm(
        total=len(outcomes),
        initial=counts["done"],
        desc="sweep",
        unit="unit",
        disable=not progress,
        dynamic_ncols=True,
    )

    def show():
        bar.set_postfix_str(f"done {counts['done']} running {len(running)} failed {counts['failed']}")

    stop = False
    try:
        while waiting or running:
            if not stop:
                still = []
                for u in waiting:
                    st = [outcomes[d].status for d in u.deps]
                    if any(s == "failed" for s in st):
                        bad = next(d for d in u.deps if outcomes[d].status == "failed")
                        outcomes[u.id] = Outcome(
                            "failed", error=f"dependency {bad} failed: {outcomes[bad].error}"
                        )
                        counts["failed"] += 1
                        bar.update(1)
                    elif all(s == "done" for s in st) and len(running) < be.slots:
                        task = {
                            "id": u.id,
                            "kind": u.kind,
                            "config": u.config,
                            "runtime": u.runtime,
                            "deps": u.deps,
                            "run_dir": str(run_dir.resolve()),
                        }
                        running[be.submit(task)] = u.id
                    else:
                        still.append(u)
                waiting = still
            show()
            if not running:
                if stop or not waiting:
                    break
                raise RuntimeError("sweep plan has a dependency cycle")  # pragma: no cover - plans are trees
            for h in be.wait(list(running), timeout=1.0):
                uid = running.pop(h)
                r = be.result(h)
                outcomes[uid] = Outcome(r["status"], r.get("metrics") or {}, r.get("error"), r.get("seconds"))
                counts[r["status"]] += 1
                bar.update(1)
                if r["status"] == "failed" and fail_fast:
                    stop = True
            if (
                stop
            ):  # --fail-fast: the running units are stopped (marked cancelled below), nothing new starts
                be.cancel(list(running))
                break
    except BaseException:  # interrupted: stop what is running (a Ray cluster we did not start keeps going)
        be.cancel(list(running))
        raise
    finally:
        show()
        bar.close()
        for uid in running.values():  # interrupted or cancelled before they finished
            if outcomes[uid].status == "pending":
                outcomes[uid] = Outcome("cancelled")


# --------------------------------------------------------------------------------------------------
# results: sweep.json, table.csv, metrics.json


def sweep_record(p: Plan, outcomes: dict[str, Outcome]) -> dict:
    def row(u: Unit) -> dict:
        o = outcomes[u.id]
        r = {
            "id": u.id,
            "kind": u.kind,
            "status": o.status,
            "metrics": o.metrics,
            "resumed": o.resumed,
            "seconds": o.seconds,
        }
        if u.axes is not None:
            r["axes"] = u.axes
        if o.error:
            r["error"] = o.error
        return r

    grid_ids = {u.id for u in p.grid}
    return {
        "kind": "sweep",
        "package_version": __version__,
        "spec": p.spec.to_dict(),
        "units": [row(u) for u in p.grid],
        "dependencies": [row(u) for u in p.units.values() if u.id not in grid_ids],
    }


def interval(values: list[float], bounds: tuple[float, float] | None) -> dict:
    """The 95% interval over seeds of a table cell (the one place that picks it).

    A bounded metric (a rate in [0, 1], an excess in [-1, 1]) gets the package's in-range interval (seeded
    percentile bootstrap over seeds); an unbounded one (a loss) the Student-t interval. One seed: no interval.
    """
    if bounds is not None and all(bounds[0] - 1e-6 <= v <= bounds[1] + 1e-6 for v in values):
        return rate_interval(values, lo=bounds[0], hi=bounds[1])
    s = ci95(values)
    if len(values) < 2:
        s["ci_low"] = s["ci_high"] = None
    return {**s, "method": "Student t over seeds (95%)"}


def aggregate(record: dict) -> list[dict]:
    """One row per (setting of the non-seed axes, metric): mean and interval over the seed axes."""
    spec = record["spec"]
    seed_axes = set(spec["seed_axes"])
    group_axes = [k for k in spec["axes"] if k not in seed_axes]
    kind = KINDS[spec["kind"]]
    groups: dict[str, dict] = {}
    for u in record["units"]:
        key = json.dumps([u["axes"][k] for k in group_axes])
        g = groups.setdefault(key, {"axes": {k: u["axes"][k] for k in group_axes}, "units": []})
        g["units"].append(u)
    rows = []
    for g in groups.values():
        done = [u for u in g["units"] if u["status"] == "done"]
        names = list(dict.fromkeys(k for u in done for k in u["metrics"]))
        for name in names:
            vals = [u["metrics"][name] for u in done if isinstance(u["metrics"].get(name), int | float)]
            if not vals:
                continue
            s = interval(vals, kind.metric_bounds(name))
            rows.append(
                {
                    **g["axes"],
                    "metric": name,
                    "n": len(vals),
                    "n_planned": len(g["units"]),
                    "mean": s["mean"],
                    "ci_low": s["ci_low"],
                    "ci_high": s["ci_high"],
                    "interval": s["method"],
                    "per_seed": s["per_seed"],
                }
            )
    return rows


def table_csv(record: dict, rows: list[dict]) -> str:
    spec = record["spec"]
    group_axes = [k for k in spec["axes"] if k not in set(spec["seed_axes"])]
    cols = group_axes + ["metric", "n", "n_planned", "mean", "ci_low", "ci_high", "interval", "per_seed"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(
            [
                ""
                if r.get(c) is None
                else ";".join(repr(float(v)) for v in r[c])
                if c == "per_seed"
                else repr(r[c])
                if isinstance(r[c], float)
                else r[c]
                for c in cols
            ]
        )
    return buf.getvalue()


def write_results(run_dir: Path, record: dict) -> None:
    from ..results import atomic_write_text

    rows = aggregate(record)
    write_json(run_dir / "sweep.json", record)
    atomic_write_text(run_dir / "table.csv", table_csv(record, rows))
    n = {
        s: sum(u["status"] == s for u in record["units"]) for s in ("done", "failed", "pending", "cancelled")
    }
    run = RunDir(run_dir, "sweep", {"spec": record["spec"], "backend": record.get("backend")})
    metric = record["spec"]["metric"]
    group_axes = [k for k in record["spec"]["axes"] if k not in set(record["spec"]["seed_axes"])]
    # the spec's metric per cell as top-level {mean, ci_low, ci_high, n, per_seed} entries: the shape that
    # `report` and `explore` list as headline numbers
    cells = {
        f"{metric} · {', '.join(f'{k}={r[k]}' for k in group_axes) or 'all'}": {
            k: r[k] for k in ("mean", "ci_low", "ci_high", "n", "n_planned", "interval", "per_seed")
        }
        for r in rows
        if r["metric"] == metric
    }
    run.write_metrics(
        {
            "units": len(record["units"]),
            **{f"units_{k}": v for k, v in n.items()},
            "metric": metric,
            "seed_axes": record["spec"]["seed_axes"],
            **cells,
            "table": rows,
        }
    )


def load_record(run_dir: str | Path) -> dict:
    from ..results import read_json

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"sweep run folder not found: {run_dir}")
    rec = read_json(run_dir / "sweep.json")
    if rec.get("kind") != "sweep":
        raise UserError(f"{run_dir / 'sweep.json'}: not a sweep record")
    return rec


def heatmap_data(record: dict, x: str, y: str, metric: str) -> dict:
    """Mean of ``metric`` per (x, y) cell over the remaining axes, which must be seed axes (like with like)."""
    spec = record["spec"]
    axes = spec["axes"]
    for flag, a in (("--x", x), ("--y", y)):
        if a not in axes:
            raise UserError(f"{flag} {a}: not an axis of this sweep (axes: {', '.join(axes) or 'none'})")
    if x == y:
        raise UserError("--x and --y must be different axes")
    others = [k for k in axes if k not in (x, y) and k not in spec["seed_axes"] and len(axes[k]) > 1]
    if others:
        raise UserError(
            f"axis {others[0]!r} has {len(axes[others[0]])} values and is not a seed axis; "
            f"plot it as --x or --y (cells must compare like with like)"
        )
    known = sorted({k for u in record["units"] for k in u["metrics"]})
    if metric not in known:
        raise UserError(f"--metric {metric}: no finished unit has it (metrics: {', '.join(known) or 'none'})")
    xs, ys = axes[x], axes[y]
    cells = [[[] for _ in xs] for _ in ys]
    for u in record["units"]:
        if u["status"] == "done" and isinstance(u["metrics"].get(metric), int | float):
            cells[ys.index(u["axes"][y])][xs.index(u["axes"][x])].append(u["metrics"][metric])
    pooled = [k for k in axes if k not in (x, y) and len(axes[k]) > 1]
    return {
        "x": x,
        "y": y,
        "metric": metric,
        "x_values": xs,
        "y_values": ys,
        "mean": [[(sum(c) / len(c)) if c else None for c in row] for row in cells],
        "n": [[len(c) for c in row] for row in cells],
        "pooled_over": pooled,
        "name": spec["name"],
    }


def default_heatmap_axes(record: dict) -> tuple[str, str] | None:
    """The two axes of the figure drawn after a sweep: the first two non-seed axes, else one and a seed axis."""
    spec = record["spec"]
    axes = [k for k in spec["axes"] if len(spec["axes"][k]) > 1]
    plain = [k for k in axes if k not in spec["seed_axes"]]
    seeds = [k for k in axes if k in spec["seed_axes"]]
    pick = (plain + seeds)[:2]
    if len(pick) < 2 or (len(plain) > 2):
        return None
    return pick[0], pick[1]


def summary_lines(record: dict) -> list[str]:
    units = record["units"]
    n = {s: sum(u["status"] == s for u in units) for s in ("done", "failed", "pending", "cancelled")}
    resumed = sum(u["resumed"] for u in units if u["status"] == "done")
    lines = [
        f"{len(units)} units: {n['done']} done ({resumed} from an earlier run), {n['failed']} failed"
        + (f", {n['cancelled']} cancelled" if n["cancelled"] else "")
        + (f", {n['pending']} not run" if n["pending"] else "")
    ]
    for u in units + record["dependencies"]:
        if u["status"] == "failed":
            lines.append(f"  failed {u['id']} {json.dumps(u.get('axes', {}), sort_keys=True)}: {u['error']}")
    metric = record["spec"]["metric"]
    group_axes = [k for k in record["spec"]["axes"] if k not in set(record["spec"]["seed_axes"])]
    for r in aggregate(record):
        if r["metric"] != metric:
            continue
        where = " ".join(f"{k}={r[k]}" for k in group_axes) or "all"
        ci = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None else ""
        per = ", ".join(f"{v:.3f}" for v in r["per_seed"])
        lines.append(f"  {where}: {metric} {r['mean']:.3f}{ci} ({r['n']} of {r['n_planned']} seeds: {per})")
    return lines


def dry_run_lines(record: dict) -> list[str]:
    units = record["units"]
    deps = record["dependencies"]
    done = sum(u["status"] == "done" for u in units + deps)
    spec = record["spec"]
    axes = " x ".join(f"{k} ({len(v)})" for k, v in spec["axes"].items()) or "no axes"
    lines = [
        f"sweep {spec['name']}: {spec['kind']} units over {axes}: {len(units)} grid units "
        f"+ {len(deps)} shared dependencies; {done} of {len(units) + len(deps)} already done"
    ]
    for u in deps + units:
        where = json.dumps(u["axes"], sort_keys=True) if "axes" in u else "(dependency)"
        lines.append(f"  {'done   ' if u['status'] == 'done' else 'to run '} {u['id']}  {where}")
    est = record["estimate"]
    basis = "; ".join(f"{k}: {v}" for k, v in est["basis"].items()) or "nothing left to run"
    lines.append(f"estimated time left: {est['seconds']:.0f} s ({basis})")
    return lines
