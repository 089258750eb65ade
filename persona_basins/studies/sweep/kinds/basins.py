"""The ``basins`` kind: one basin study (``persona-basins basins``'s
:func:`~persona_basins.studies.basins.run_basins`) on an organism with a set of plain (and inoculated)
adapters, one per fine-tuning seed: given as folders, or trained for it as ``em`` dependency units with the
``finetune`` settings and seeds ``0 .. finetune_seeds - 1`` (shared by every basins unit that needs them).
Settings: :class:`OrganismSource`, :class:`BasinsAdapters` and the scan,
:class:`~persona_basins.studies.basins.BasinsConfig` (the ``basins`` command's flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ....config import check, param
from ....train.finetune import FinetuneConfig
from ...basins import BasinsConfig
from .base import (
    DepFn,
    Resolved,
    SettingError,
    UnitKind,
    as_metrics,
    build,
    check_table,
    existing_path,
    flat_numbers,
    folder_sha256,
    pick,
    refuse_unless_default,
    settings_of,
)
from .em import adapter_dependency
from .llc import ADAPTER_FILES
from .organism import OrganismSource, organism_path, resolve_source


@dataclass(frozen=True)
class BasinsAdapters:
    """The adapters of a basin study unit: folders (the ``basins`` command's ``--adapter`` and
    ``--inoculated-adapter``), or trained for it as ``em`` units."""

    adapters: list[str] = param(default_factory=list, help="plain adapter folders, one per fine-tuning seed")
    inoculated_adapters: list[str] = param(
        default_factory=list, help="inoculated adapter folders, one per seed"
    )
    finetune: dict = param(
        default_factory=dict,
        help="FinetuneConfig fields of the em units that train the adapters (no adapters)",
    )
    finetune_seeds: int = param(3, ge=1, help="fine-tuning seeds 0..N-1 of the trained adapters")
    inoculated: bool = param(True, help="also train inoculated adapters (no adapters given)")

    def __post_init__(self):
        check(self)


SETTINGS = settings_of(OrganismSource, BasinsAdapters, BasinsConfig)
HEADLINE = ("critical_magnitude", "inoculation_widening", "thinness_random_over_plain")
TRAINED_ONLY = ("finetune", "finetune_seeds", "inoculated")


def _adapter_folders(settings: dict, key: str) -> list[dict]:
    out = []
    for i, given in enumerate(settings[key]):
        folder = existing_path({key: given}, key, folder=True)
        missing = [n for n in ADAPTER_FILES if not (folder / n).is_file()]
        if missing:
            raise SettingError(f"{key}[{i}]", f"not a PEFT adapter folder: {folder / missing[0]} is missing")
        out.append({"fingerprint": folder_sha256(folder, ADAPTER_FILES), "path": str(folder)})
    return out


def _trained(settings: dict, study: BasinsAdapters, dep: DepFn) -> tuple[list, list]:
    for name in ("condition", "seed"):
        if name in study.finetune:
            raise SettingError(
                f"finetune.{name}", "set by the study (plain and inoculated, seeds 0..finetune_seeds-1)"
            )
    check_table(FinetuneConfig, study.finetune, "finetune.", what="fine-tuning")
    if build(FinetuneConfig, study.finetune, "finetune.").full:
        raise SettingError("finetune.full", "must be false: the basin study scans along LoRA adapters")
    conditions = ("plain", "inoculated") if study.inoculated else ("plain",)
    units = {
        condition: [
            adapter_dependency(dep, settings, {**study.finetune, "condition": condition, "seed": seed})
            for seed in range(study.finetune_seeds)
        ]
        for condition in conditions
    }
    return units["plain"], units.get("inoculated", [])


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    study = build(BasinsAdapters, pick(settings, BasinsAdapters))
    build(BasinsConfig, pick(settings, BasinsConfig))
    source = resolve_source(settings, dep)
    scan = {k: settings[k] for k in ("t_max", "points", "level", "random", "seed")}  # as given: ids stay
    if study.adapters:
        refuse_unless_default(settings, SETTINGS, TRAINED_ONLY, "with settings.adapters (adapter folders)")
        plain, inoculated = (
            _adapter_folders(settings, "adapters"),
            _adapter_folders(settings, "inoculated_adapters"),
        )
        runtime = {**source.runtime, "adapters": [a.pop("path") for a in plain]}
        runtime["inoculated_adapters"] = [a.pop("path") for a in inoculated]
        deps = source.deps
    else:
        if study.inoculated_adapters:
            raise SettingError("inoculated_adapters", "needs settings.adapters (the plain adapters)")
        plain_units, inoculated_units = _trained(settings, study, dep)
        plain, inoculated = [{"unit": u} for u in plain_units], [{"unit": u} for u in inoculated_units]
        runtime = {**source.runtime, "adapter_units": plain_units, "inoculated_units": inoculated_units}
        deps = source.deps + tuple(plain_units) + tuple(inoculated_units)
    config = {
        "study": "run_basins",
        "organism": source.config,
        "adapters": plain,
        "inoculated_adapters": inoculated,
        "scan": scan,
    }
    return Resolved(config=config, deps=deps, runtime=runtime)


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ...basins import run_basins

    if "adapter_units" in runtime:
        plain = [deps[u] / "adapter" for u in runtime["adapter_units"]]
        inoculated = [deps[u] / "adapter" for u in runtime["inoculated_units"]]
    else:
        plain, inoculated = runtime["adapters"], runtime["inoculated_adapters"]
    scan = config["scan"]
    result = run_basins(
        organism_path(runtime, deps),
        plain,
        inoculated,
        unit_dir / "basins",
        t_max=scan["t_max"],
        points=scan["points"],
        level=scan["level"],
        n_random=scan["random"],
        seed=scan["seed"],
    )
    return flat_numbers(as_metrics(result), HEADLINE)


def _prior(config: dict) -> float:
    adapters = len(config["adapters"]) + len(config["inoculated_adapters"])
    return 5.0 + 0.5 * config["scan"]["points"] * adapters * (2 + config["scan"]["random"])


KIND = UnitKind(
    "basins", SETTINGS, _resolve, _run, primary_metric="critical_magnitude_plain", seconds_prior=_prior
)
