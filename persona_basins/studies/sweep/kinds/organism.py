"""The ``organism`` kind (build an organism from a preset), and the organism every other kind reads: a
folder named by ``organism``, or one built from ``preset``/``organism_seed``/``organism_overrides`` as a
shared ``organism`` dependency unit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....config import check, param
from ....errors import ConfigError, UserError
from ....models.adapters import MODULE_ALIASES
from ....models.organism import PRESETS, OrganismConfig, organism_fingerprint, preset_config
from ....results import read_json
from .base import (
    DepFn,
    Resolved,
    SettingError,
    UnitKind,
    build,
    check_table,
    refuse_unless_default,
    settings_of,
)


@dataclass(frozen=True)
class OrganismUnitConfig:
    """The settings of an ``organism`` unit."""

    preset: str = param("tiny", choices=tuple(PRESETS), help="organism preset")
    seed: int = param(0, ge=0, le=2**32 - 1, help="organism (world and training) seed")
    overrides: dict = param(
        default_factory=dict, help="OrganismConfig fields that replace the preset's (world: a table)"
    )

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class OrganismSource:
    """The organism a unit reads: a built folder, or a preset built once as a shared dependency."""

    organism: str = param("", help="an organism folder (instead of building one from a preset)")
    preset: str = param(
        "tiny", choices=tuple(PRESETS), help="organism preset when no organism folder is given"
    )
    organism_seed: int = param(0, ge=0, le=2**32 - 1, help="organism seed when no organism folder is given")
    organism_overrides: dict = param(
        default_factory=dict, help="OrganismConfig fields that replace the preset's (world: a table)"
    )

    def __post_init__(self):
        check(self)


SOURCE_SETTINGS = settings_of(OrganismSource)


def organism_config(preset: str, seed: int, overrides: dict, prefix: str) -> OrganismConfig:
    """The preset's config with ``overrides``, checked field by field (errors name ``prefix + field``)."""
    check_table(OrganismConfig, overrides, prefix, what="organism", exclude=("preset", "seed"))
    try:
        return preset_config(preset, seed=seed, **json.loads(json.dumps(overrides)))
    except ConfigError as error:  # a rule across fields (d_model a multiple of n_head, ...)
        nested = "world." if error.owner == "WorldConfig" else ""
        raise SettingError(f"{prefix}{nested}{error.field}", error.problem) from None


# per process: (folder, every file's path, size and mtime) -> fingerprint, so a grid of many units on one
# organism verifies its manifest (a SHA-256 of every file) once, and a changed file is verified again
_FINGERPRINTS: dict[tuple, str] = {}


def _folder_stamp(path: Path) -> tuple:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return (
        str(path),
        tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files),
    )


def organism_folder_fingerprint(path: Path) -> str:
    """The organism's one fingerprint (:func:`~persona_basins.models.organism.organism_fingerprint`, a hash of
    its verified build manifest): a moved folder keeps it, a rebuilt organism changes it. A missing, partial
    or changed folder is a :class:`SettingError` on ``organism``."""
    try:
        if not path.is_dir():
            return organism_fingerprint(path)  # raises: organism folder not found
        stamp = _folder_stamp(path)
        if stamp not in _FINGERPRINTS:
            _FINGERPRINTS[stamp] = organism_fingerprint(path)
        return _FINGERPRINTS[stamp]
    except UserError as error:
        raise SettingError("organism", str(error)) from None


@dataclass(frozen=True)
class Architecture:
    family: str  # gpt2 | llama
    n_layer: int

    def check(self, layer: int | None, module: str | None, keys=("layer", "module")) -> None:
        """``layer`` and ``module`` exist in this architecture (checked without building the model)."""
        if layer is not None and not 0 <= layer < self.n_layer:
            raise SettingError(
                keys[0],
                f"must be < {self.n_layer} (the organism has layers 0..{self.n_layer - 1}), got {layer}",
            )
        aliases = MODULE_ALIASES.get(self.family, {})
        known = sorted({*aliases, *aliases.values()})
        if module is not None and known and module not in known:
            raise SettingError(
                keys[1], f"must be one of {', '.join(known)} for a {self.family} model, got {module!r}"
            )


def folder_architecture(path: Path) -> Architecture:
    """The architecture in a model folder's Hugging Face ``config.json``."""
    hf = read_json(path / "config.json", expect=dict)
    layers = hf.get("num_hidden_layers") or hf.get("n_layer") or hf.get("num_layers") or 0
    return Architecture(str(hf.get("model_type", "")), int(layers))


@dataclass(frozen=True)
class ResolvedSource:
    config: dict  # hashed: {"fingerprint": ...} for a folder, {"unit": id} for a preset
    deps: tuple
    runtime: dict  # organism_path (a folder) or organism_unit (a dependency)
    architecture: Architecture


def resolve_source(settings: dict, dep: DepFn) -> ResolvedSource:
    """The organism of a unit: a folder, or the ``organism`` dependency unit of the preset settings."""
    if settings["organism"]:
        refuse_unless_default(
            settings,
            SOURCE_SETTINGS,
            ("organism_seed", "organism_overrides"),
            "with settings.organism (a built organism folder)",
        )
        path = Path(settings["organism"]).expanduser().resolve()
        config = {"fingerprint": organism_folder_fingerprint(path)}
        return ResolvedSource(config, (), {"organism_path": str(path)}, folder_architecture(path))
    build(OrganismSource, {k: settings[k] for k in SOURCE_SETTINGS})
    cfg = organism_config(
        settings["preset"], settings["organism_seed"], settings["organism_overrides"], "organism_overrides."
    )
    # The organism is identified by its own unit id: the hash of its fully resolved config.
    unit = dep(
        "organism",
        {
            "preset": settings["preset"],
            "seed": settings["organism_seed"],
            "overrides": settings["organism_overrides"],
        },
    )
    return ResolvedSource(
        {"unit": unit}, (unit,), {"organism_unit": unit}, Architecture(cfg.arch, cfg.n_layer)
    )


def source_settings(settings: dict) -> dict:
    """The organism settings of a unit, to pass on to a dependency that reads the same organism."""
    return {k: settings[k] for k in SOURCE_SETTINGS}


def organism_path(runtime: dict, deps: dict[str, Path]) -> str:
    """Where the unit's organism is: its folder, or inside the finished dependency unit."""
    if runtime.get("organism_path"):
        return runtime["organism_path"]
    if runtime.get("organism_unit"):
        return str(deps[runtime["organism_unit"]] / "organism")
    return str(next(iter(deps.values())) / "organism")  # units planned before runtime named it


_LOADED: dict[str, Any] = {}  # per worker process: the organism folder last loaded


def load_organism_cached(path: str):
    from ....models.organism import load_organism

    if path not in _LOADED:
        _LOADED.clear()  # one at a time: a sweep over organism seeds must not pile them up in memory
        _LOADED[path] = load_organism(path)
    return _LOADED[path]


# --- the organism kind --------------------------------------------------------------------------------------
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


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    build(OrganismUnitConfig, settings)
    cfg = organism_config(settings["preset"], settings["seed"], settings["overrides"], "overrides.")
    return Resolved(config={"organism": cfg.to_dict()})


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ...organism import build_organism

    out = build_organism(OrganismConfig.from_dict(config["organism"]), unit_dir / "organism", progress=False)
    metrics = read_json(out / "metrics.json")
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _prior(config: dict) -> float:
    organism = config["organism"]
    return (0.025 if organism["preset"] == "tiny" else 0.12) * (
        organism["pretrain_steps"] + organism["sft_steps"]
    )


KIND = UnitKind(
    "organism",
    settings_of(OrganismUnitConfig),
    _resolve,
    _run,
    primary_metric="aligned_rate",
    seconds_prior=_prior,
    metric_bounds=lambda name: (0.0, 1.0) if name in ORGANISM_RATES else None,
)
