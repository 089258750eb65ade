"""The ``eigenform`` kind: one eigenform experiment (``persona-basins eigenform``'s
:func:`~persona_basins.studies.eigenform.run_eigenform_command`) on an organism and one adapter: a folder,
or the adapter of an ``em`` unit trained with the ``finetune`` settings (a shared dependency). Settings:
:class:`OrganismSource`, :class:`EigenformAdapter`,
:class:`~persona_basins.studies.eigenform.EigenformRunConfig` (the grid) and
:class:`~persona_basins.measure.eigenform.EigenformConfig` (the cycle and the measurement)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ....config import check, param
from ....measure.eigenform import EigenformConfig
from ....train.finetune import FinetuneConfig
from ...eigenform import EigenformRunConfig
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
    settings_of,
)
from .em import adapter_dependency
from .llc import ADAPTER_FILES
from .organism import OrganismSource, organism_path, resolve_source


@dataclass(frozen=True)
class EigenformAdapter:
    """The adapter of an eigenform unit: a folder (the command's ``--adapter``), or trained as an em unit."""

    adapter: str = param("", help="the adapter folder; empty: train one (an em unit with finetune)")
    finetune: dict = param(default_factory=dict, help="FinetuneConfig fields of the em unit (no adapter)")

    def __post_init__(self):
        check(self)


SETTINGS = settings_of(OrganismSource, EigenformAdapter, EigenformRunConfig, EigenformConfig)
HEADLINE = (
    "return_rate",
    "contraction_factor",
    "static_safe_scale",
    "static_break_scale",
    "return_rate_by_variant",
    "paired_contraction_by_variant",
    "behavioural_contraction_by_variant",
)


def _adapter(run: EigenformAdapter, settings: dict, dep: DepFn) -> tuple[dict, dict, tuple]:
    if run.adapter:
        if run.finetune:
            raise SettingError("finetune", "not used with settings.adapter (an adapter folder)")
        folder = existing_path(settings, "adapter", folder=True)
        missing = [n for n in ADAPTER_FILES if not (folder / n).is_file()]
        if missing:
            raise SettingError("adapter", f"not a PEFT adapter folder: {folder / missing[0]} is missing")
        return {"fingerprint": folder_sha256(folder, ADAPTER_FILES)}, {"adapter_path": str(folder)}, ()
    check_table(FinetuneConfig, run.finetune, "finetune.", what="fine-tuning")
    if build(FinetuneConfig, run.finetune, "finetune.").full:
        raise SettingError("finetune.full", "must be false: the eigenform run perturbs along a LoRA adapter")
    unit = adapter_dependency(dep, settings, run.finetune)
    return {"unit": unit}, {"adapter_unit": unit}, (unit,)


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    adapter_settings = build(EigenformAdapter, pick(settings, EigenformAdapter))
    run = build(EigenformRunConfig, pick(settings, EigenformRunConfig))
    process = build(EigenformConfig, pick(settings, EigenformConfig))
    source = resolve_source(settings, dep)
    if process.vector_layer is not None:
        source.architecture.check(process.vector_layer, None, keys=("vector_layer", "module"))
    adapter, runtime, adapter_deps = _adapter(adapter_settings, settings, dep)
    config = {
        "study": "run_eigenform",
        "organism": source.config,
        "adapter": adapter,
        "run": {"cycles": run.cycles, "seeds": run.seeds, "ts": run.ts, "fast": run.fast, "arms": run.arms},
        "eigenform": process.to_dict(),
    }
    return Resolved(config=config, deps=source.deps + adapter_deps, runtime={**source.runtime, **runtime})


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ...eigenform import run_eigenform_command

    adapter = runtime.get("adapter_path") or deps[runtime["adapter_unit"]] / "adapter"
    run = config["run"]
    result = run_eigenform_command(
        organism_path(runtime, deps),
        adapter,
        unit_dir / "eigenform",
        cycles=run["cycles"],
        seeds=run["seeds"],
        ts=run["ts"] or None,
        fast=run["fast"],
        config=EigenformConfig(**config["eigenform"]),
        progress=False,
        arms=run["arms"] or None,
    )
    return flat_numbers(as_metrics(result), HEADLINE)


def _bounds(name: str) -> tuple[float, float] | None:
    return (0.0, 1.0) if name.startswith("return_rate") else None


KIND = UnitKind("eigenform", SETTINGS, _resolve, _run, primary_metric="return_rate", metric_bounds=_bounds)
