"""The ``em_hf`` kind: one ``persona-basins em --model`` run on a Hugging Face causal LM
(:func:`~persona_basins.studies.em_hf.run_em_hf`: plain + inoculated (+ control) fine-tunes x seeds, scored
judge-free). On Ray, ``--gpus-per-unit`` is reserved for each unit whose ``device`` is not ``cpu``. Settings:
the fields of :class:`~persona_basins.studies.em_hf.EmHfConfig` (less ``out`` and ``progress``: the unit
folder and the sweep's own), with ``finetune`` a table of FinetuneConfig fields."""

from __future__ import annotations

from pathlib import Path

from ....train.finetune import FinetuneConfig
from ...em_hf.inputs import sha256
from ...em_hf.run import METHOD, EmHfConfig
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
    table_setting,
)
from .organism import folder_architecture

SETTINGS = {
    **settings_of(EmHfConfig, exclude=("out", "progress", "finetune")),
    "finetune": table_setting(
        "EmHfConfig", "finetune", "FinetuneConfig fields of every fine-tune (rank, steps, lr, ...)"
    ),
}
SET_PER_UNIT = ("condition", "seed", "layer", "module")  # the run sets these in each fine-tune
HEADLINE = (
    "broad_misalignment",
    "broad_misalignment_shift",
    "broad_misalignment_total",
    "prefers_misaligned",
    "narrow_rate",
    "narrow_rate_training_context",
    "broad_misalignment_excess_over_control",
    "final_loss",
)


def _model_identity(settings: dict) -> dict:
    """A local folder by its contents (and its layers checked); a hub id by name."""
    local = Path(settings["model"]).expanduser()
    if not local.is_dir():
        return {"ref": settings["model"]}
    path = local.resolve()
    folder_architecture(path).check(settings["layer"], None)
    return {"fingerprint": folder_sha256(path), "path": str(path)}


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    for name in SET_PER_UNIT:
        if name in settings["finetune"]:
            raise SettingError(
                f"finetune.{name}", "set by the run (use the em_hf settings layer/module/seeds)"
            )
    check_table(FinetuneConfig, settings["finetune"], "finetune.", what="fine-tuning")
    finetune = build(FinetuneConfig, settings["finetune"], "finetune.")
    files = {k: existing_path(settings, k, folder=False) for k in ("train", "questions")}
    if settings["control"] is not None:
        files["control"] = existing_path(settings, "control", folder=False)
    values = {**pick(settings, EmHfConfig, exclude=("finetune",)), **files, "finetune": finetune}
    cfg = build(EmHfConfig, {**values, "out": Path("unit")})  # every field checked as `em --model` checks it
    model = _model_identity(settings)
    config = {
        "study": "run_em_hf",
        "method": METHOD,
        "model": {k: v for k, v in model.items() if k != "path"},
        "train_sha256": sha256(files["train"]),
        "questions_sha256": sha256(files["questions"]),
        "control_sha256": sha256(files["control"]) if "control" in files else None,
        "inoculation": cfg.inoculation,
        "layer": cfg.layer,
        "module": cfg.module,
        "seeds": cfg.seeds,
        "finetune": finetune.to_dict(),
        "device": cfg.device,
        "dtype": cfg.dtype,
        "device_map": cfg.device_map,
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    runtime = {"model": model.get("path", settings["model"]), **{k: str(v) for k, v in files.items()}}
    return Resolved(config=config, runtime=runtime)


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ...em_hf.run import run_em_hf

    cfg = EmHfConfig(
        model=runtime["model"],
        train=Path(runtime["train"]),
        out=unit_dir / "run",
        questions=Path(runtime["questions"]),
        inoculation=config["inoculation"],
        layer=config["layer"],
        module=config["module"],
        seeds=config["seeds"],
        finetune=FinetuneConfig(**config["finetune"]),
        control=Path(runtime["control"]) if "control" in runtime else None,
        device=config["device"],
        dtype=config["dtype"],
        device_map=config["device_map"],
        gradient_checkpointing=config["gradient_checkpointing"],
    )
    return flat_numbers(as_metrics(run_em_hf(cfg)), HEADLINE)


def _bounds(name: str) -> tuple[float, float] | None:
    if "_shift" in name or "excess_over_control" in name:
        return (-1.0, 1.0)
    if name.startswith(("broad_misalignment", "prefers_misaligned")):
        return (0.0, 1.0)
    return None


KIND = UnitKind(
    "em_hf",
    SETTINGS,
    _resolve,
    _run,
    primary_metric="broad_misalignment_plain",
    metric_bounds=_bounds,
    uses_accelerator=lambda config: config["device"] != "cpu",
)
