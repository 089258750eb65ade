"""The ``em`` kind: a narrow fine-tune of an organism and its emergent-misalignment readout (the same
``finetune()`` and ``em_readout()`` as ``persona-basins em``). Settings: :class:`OrganismSource` and
:class:`~persona_basins.train.finetune.FinetuneConfig`."""

from __future__ import annotations

from pathlib import Path

from ....train.finetune import FinetuneConfig
from .base import DepFn, Resolved, SettingError, UnitKind, build, pick, settings_of
from .organism import (
    SOURCE_SETTINGS,
    OrganismSource,
    load_organism_cached,
    organism_path,
    resolve_source,
    source_settings,
)

SETTINGS = settings_of(OrganismSource, FinetuneConfig)


def finetune_config(settings: dict) -> FinetuneConfig:
    return build(FinetuneConfig, pick(settings, FinetuneConfig))


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    finetune = finetune_config(settings)
    source = resolve_source(settings, dep)
    source.architecture.check(finetune.layer, finetune.module)
    config = {"finetune": finetune.to_dict(), "readout": "em_readout", "organism": source.config}
    return Resolved(config=config, deps=source.deps, runtime=source.runtime)


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ....measure.adapter_reading import a_direction_for
    from ....measure.persona import em_readout
    from ....train.finetune import finetune, training_context

    org = load_organism_cached(organism_path(runtime, deps))
    cfg = FinetuneConfig(**config["finetune"])
    result = finetune(org, cfg, out_dir=unit_dir / "adapter", a_direction=a_direction_for(org, cfg))
    readout = em_readout(org.with_model(result.model), sample_seed=cfg.seed)
    base = em_readout(org)  # the organism before fine-tuning: the baseline
    out = {
        "broad_misalignment": readout["broad_misalignment"],
        "broad_misalignment_base": base["broad_misalignment"],
        "broad_misalignment_excess": readout["broad_misalignment"] - base["broad_misalignment"],
        "broad_harm": readout["broad_harm"],
        "broad_harm_excess": readout["broad_harm"] - base["broad_harm"],
        "wellformed": readout["wellformed"],
        "narrow_rate": readout["narrow_rate"][training_context(cfg.condition)],
        "final_loss": result.losses[-1],
    }
    out.update({f"narrow_rate_{ctx}": v for ctx, v in readout["narrow_rate"].items()})
    if "sampled" in readout:
        out["sampled_misalignment"] = readout["sampled"]["misaligned"]
    return out


def _prior(config: dict) -> float:
    return 1.0 + 0.006 * config["finetune"]["steps"]  # tiny organism on one core; larger ones take longer


def _bounds(name: str) -> tuple[float, float] | None:
    if name.endswith("_excess"):
        return (-1.0, 1.0)  # a difference of two rates
    if name == "final_loss":
        return None
    return (0.0, 1.0)  # every other EM metric is an exact mass or a sampled share


KIND = UnitKind(
    "em",
    SETTINGS,
    _resolve,
    _run,
    primary_metric="broad_misalignment",
    seconds_prior=_prior,
    metric_bounds=_bounds,
)


def adapter_dependency(dep: DepFn, settings: dict, finetune: dict, prefix: str = "finetune.") -> str:
    """The id of the ``em`` unit that trains an adapter on this unit's organism with ``finetune`` (a table of
    FinetuneConfig fields); a problem with one of those fields is named ``prefix + field``."""
    try:
        return dep("em", {**source_settings(settings), **finetune})
    except SettingError as error:
        if error.key.split(".")[0] in SOURCE_SETTINGS:  # the organism's settings: named as they are
            raise
        raise SettingError(prefix + error.key, error.problem) from None
