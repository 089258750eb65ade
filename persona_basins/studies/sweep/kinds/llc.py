"""The ``llc`` kind: one LLC estimate (:func:`~persona_basins.studies.llc.run_estimate`, as ``llc``).

The model is an organism (a folder, or a preset built as a dependency) or a Hugging Face causal LM folder
(``model``, with a ``data`` file), optionally with an adapter: a folder, or ``adapter = "em"`` for the
adapter of an ``em`` unit trained with the ``finetune`` settings (a shared dependency): the final adapter
(``checkpoint = "final"``, the default) or a saved step (``checkpoint = N``: ``checkpoints/step_N``; 0 is
the step-0 point of the trajectory, B = 0). With ``path = "adapter"`` (or ``"random"``) the estimate is
taken at the point ``w0 + t dW`` of the edit path along the adapter's weight delta (or a random direction
of the same norm), under the self-KL loss that is minimal at that point. Settings: :class:`OrganismSource`,
:class:`LLCUnitConfig` and :class:`~persona_basins.measure.llc.SamplerConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ....config import check, param
from ....measure.llc import SamplerConfig
from ....models.hf import DTYPE_CHOICES
from ....train.finetune import FinetuneConfig
from .base import (
    DepFn,
    Resolved,
    SettingError,
    UnitKind,
    build,
    check_table,
    existing_path,
    file_sha256,
    folder_sha256,
    pick,
    refuse_unless_default,
    settings_of,
)
from .em import adapter_dependency
from .organism import SOURCE_SETTINGS, OrganismSource, folder_architecture, organism_path, resolve_source

FROM_EM = "em"  # adapter = "em": the adapter of an em dependency unit
PATHS = ("none", "adapter", "random")
LOSSES = ("auto", "lm", "self_kl", "self_kl_reverse")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FINAL = "final"  # checkpoint = "final": the adapter the fine-tune ended with (not a checkpoints/ step)


@dataclass(frozen=True)
class LLCUnitConfig:
    """What one LLC unit measures (the sampler's settings are :class:`SamplerConfig`'s)."""

    model: str = param("", help="a Hugging Face causal LM folder instead of an organism (needs data)")
    data: str = param("", help="text file, one document per line (default for an organism: its mixture)")
    adapter: str = param("", help='a PEFT adapter folder, or "em": the adapter of an em unit with finetune')
    finetune: dict = param(default_factory=dict, help='FinetuneConfig fields of the em unit (adapter = "em")')
    checkpoint: int | str = param(
        FINAL,
        ge=0,
        choices=(FINAL,),
        help='"final": the final adapter; N: the saved step checkpoints/step_N (0: step 0, B = 0)',
    )
    path: str = param(
        "none", choices=PATHS, help="none: the model (with its adapter); adapter/random: the point w0 + t dW"
    )
    t: float = param(1.0, help="position on the edit path (0: the model without the adapter)")
    direction_seed: int = param(0, ge=0, help="seed of the random direction (path = random)")
    restrict: str = param(
        "", help="which parameters move: adapter | layer:I | layer:I/head:H | REGEX ('': all, or the adapter)"
    )
    loss: str = param("auto", choices=LOSSES, help="auto: self_kl on an edit path, else the LM loss")
    n_docs: int = param(64, ge=1, help="documents used as the dataset")
    seq_len: int = param(64, ge=2, help="max tokens per document of the data file")
    dtype: str = param("fp32", choices=DTYPE_CHOICES, help="weights' dtype (fp32: SGLD steps vanish in bf16)")

    def __post_init__(self):
        check(self)


SETTINGS = settings_of(OrganismSource, LLCUnitConfig, SamplerConfig)


def _check_target(target: LLCUnitConfig, settings: dict) -> None:
    if target.model:
        refuse_unless_default(
            settings, SOURCE_SETTINGS, SOURCE_SETTINGS, "with settings.model (a Hugging Face model)"
        )
        if not target.data:
            raise SettingError("data", "required with settings.model (a text file, one document per line)")
        if target.path != "none":
            raise SettingError("path", "an edit path needs an organism (not settings.model)")
    if target.path != "none" and not target.adapter:
        raise SettingError("path", f"{target.path!r} needs an adapter (its weight delta sets the direction)")
    if target.path == "none" and target.loss in ("self_kl", "self_kl_reverse") and not target.adapter:
        # with an adapter (e.g. a fine-tune's checkpoint: the trajectory study) the self-KL at the adapted
        # model is minimal there, where the LM loss of a checkpoint mid-training is not
        raise SettingError("loss", "the self-KL losses need an edit path or an adapter")
    if target.path != "none" and target.loss == "lm":
        raise SettingError("loss", "the LM loss is not minimal on an edit path: use self_kl (or auto)")
    if target.path == "none":
        refuse_unless_default(settings, SETTINGS, ("t", "direction_seed"), "unless path = adapter or random")
    elif target.path == "adapter":
        refuse_unless_default(settings, SETTINGS, ("direction_seed",), "unless path = random")
    if target.adapter != FROM_EM and target.finetune:
        raise SettingError("finetune", 'not used unless adapter = "em"')
    if not target.adapter and target.checkpoint != FINAL:
        raise SettingError("checkpoint", "needs an adapter")


def _adapter(target: LLCUnitConfig, settings: dict, dep: DepFn) -> tuple[dict | None, dict, tuple]:
    """(hashed, runtime, deps) of the unit's adapter."""
    if not target.adapter:
        return None, {}, ()
    if target.adapter == FROM_EM:
        check_table(FinetuneConfig, target.finetune, "finetune.", what="fine-tuning")
        finetune = build(FinetuneConfig, target.finetune, "finetune.")
        if finetune.full:
            raise SettingError("finetune.full", "must be false: a full fine-tune saves no adapter")
        if target.checkpoint != FINAL and (
            not finetune.checkpoint_every
            or target.checkpoint % finetune.checkpoint_every
            or target.checkpoint > finetune.steps
        ):
            raise SettingError(
                "checkpoint",
                f"must be a step the em unit saves (a multiple of finetune.checkpoint_every = "
                f"{finetune.checkpoint_every}, at most finetune.steps = {finetune.steps}), "
                f"got {target.checkpoint}",
            )
        unit = adapter_dependency(dep, settings, target.finetune)
        return {"unit": unit, "checkpoint": target.checkpoint}, {"adapter_unit": unit}, (unit,)
    folder = existing_path(settings, "adapter", folder=True)
    if target.checkpoint != FINAL:
        folder = folder / "checkpoints" / f"step_{target.checkpoint:06d}"
        if not folder.is_dir():
            raise SettingError("checkpoint", f"no adapter checkpoint {folder}")
    missing = [n for n in ADAPTER_FILES if not (folder / n).is_file()]
    if missing:
        raise SettingError("adapter", f"not a PEFT adapter folder: {folder / missing[0]} is missing")
    return {"fingerprint": folder_sha256(folder, ADAPTER_FILES)}, {"adapter_path": str(folder)}, ()


def _resolve(settings: dict, dep: DepFn) -> Resolved:
    target = build(LLCUnitConfig, pick(settings, LLCUnitConfig))
    sampler = build(SamplerConfig, pick(settings, SamplerConfig))
    _check_target(target, settings)
    runtime: dict = {}
    deps: tuple = ()
    if target.model:
        path = existing_path(settings, "model", folder=True)
        folder_architecture(path)  # a model folder with a readable config.json
        model = {"fingerprint": folder_sha256(path)}
        runtime["model_path"] = str(path)
    else:
        source = resolve_source(settings, dep)
        model, runtime, deps = {"organism": source.config}, dict(source.runtime), source.deps
    if target.data:
        data_file = existing_path(settings, "data", folder=False)
        runtime["data_path"] = str(data_file)
        data = {"sha256": file_sha256(data_file), "seq_len": target.seq_len}
    else:
        data = "organism mixture"
    adapter, adapter_runtime, adapter_deps = _adapter(target, settings, dep)
    runtime.update(adapter_runtime)
    loss = target.loss if target.loss != "auto" else ("self_kl" if target.path != "none" else "lm")
    config = {
        "estimator": "run_estimate",
        "model": model,
        "data": data,
        "n_docs": target.n_docs,
        "adapter": adapter,
        "path": None if target.path == "none" else {"direction": target.path, "t": target.t},
        "random_direction_seed": target.direction_seed if target.path == "random" else None,
        "restrict": target.restrict or None,
        "loss": loss,
        "dtype": target.dtype,
        "sampler": sampler.to_dict(),
    }
    return Resolved(config=config, deps=deps + adapter_deps, runtime=runtime)


def _adapter_dir(config: dict, runtime: dict, deps: dict[str, Path]) -> Path | None:
    if runtime.get("adapter_path"):
        return Path(runtime["adapter_path"])
    if runtime.get("adapter_unit"):
        folder = deps[runtime["adapter_unit"]] / "adapter"
        step = config["adapter"]["checkpoint"]
        return folder if step == FINAL else folder / "checkpoints" / f"step_{step:06d}"
    return None


def _path_target(config: dict, organism_dir: str, adapter_dir: Path, sampler: SamplerConfig):
    """The organism at ``w0 + t dW`` with the self-KL loss built at that point (minimal there)."""
    from ....measure.llc import self_kl_loss_fn
    from ....models.edits import adapter_on_copy, merged_copy, single_lora_delta
    from ...llc import LLCTarget
    from .organism import load_organism_cached

    org = load_organism_cached(organism_dir)
    ids = org.mixture_input_ids(config["n_docs"], sampler.seed)
    name, delta = single_lora_delta(adapter_on_copy(org.model, adapter_dir))
    path = config["path"]
    if path["direction"] == "random":  # rank-1 a b^T, Gaussian factors, scaled to the adapter's |dW|
        from ....measure.basins import random_weight_deltas

        delta = random_weight_deltas(delta, 1, seed=config["random_direction_seed"])[0]
    model = merged_copy(org.model, {f"{name}.weight": delta}, path["t"])
    direction = "reverse" if config["loss"] == "self_kl_reverse" else "forward"
    loss_fn, data = self_kl_loss_fn(model, ids, pad_token_id=0, direction=direction)
    source = f"organism mixture at w0 + {path['t']:g} dW ({path['direction']} direction of {name})"
    return LLCTarget(model, loss_fn, data, config["restrict"], source)


def _run(config: dict, runtime: dict, unit_dir: Path, deps: dict[str, Path]) -> dict:
    from ...llc import load_target, run_estimate
    from .base import as_metrics

    sampler = SamplerConfig.from_dict(config["sampler"])
    adapter_dir = _adapter_dir(config, runtime, deps)
    model_dir = runtime.get("model_path") or organism_path(runtime, deps)
    if config["path"] is not None:
        target = _path_target(config, model_dir, adapter_dir, sampler)
    else:
        target = load_target(
            model_dir,
            adapter=adapter_dir,
            restrict=config["restrict"],
            data_file=runtime.get("data_path"),
            n_docs=config["n_docs"],
            seq_len=config["data"]["seq_len"] if isinstance(config["data"], dict) else 64,
            seed=sampler.seed,
            device=sampler.device,
            dtype=config["dtype"],
        )
        if config["loss"] in ("self_kl", "self_kl_reverse"):  # the self-KL at the adapted model
            import dataclasses

            from ....measure.llc import self_kl_loss_fn

            direction = "reverse" if config["loss"] == "self_kl_reverse" else "forward"
            loss_fn, data = self_kl_loss_fn(
                target.model, target.input_ids, pad_token_id=0, direction=direction
            )
            target = dataclasses.replace(target, loss_fn=loss_fn, input_ids=data)
    result = run_estimate(target, unit_dir / "llc", config=sampler, n=config["n_docs"])
    return _headline(as_metrics(result))


def _headline(metrics: dict) -> dict:
    """The unit's numbers: the estimate (absent when withheld), its interval, the gates and diagnostics."""
    estimate = metrics.get("llc") or {}
    numbers = {
        "llc": estimate.get("mean"),
        "llc_mcse": estimate.get("mcse"),
        "llc_low": estimate.get("lo"),
        "llc_high": estimate.get("hi"),
        "llc_std_over_chains": estimate.get("std_over_chains"),
        "converged": float(bool(estimate.get("converged"))),
    }
    diagnostics = metrics.get("diagnostics") or {}
    for key in ("mala_acceptance", "rhat", "ess_bulk", "init_loss", "frac_negative_draws"):
        numbers[key] = diagnostics.get(key)
    return {k: v for k, v in numbers.items() if isinstance(v, int | float) and v == v}


def _bounds(name: str) -> tuple[float, float] | None:
    return (0.0, 1.0) if name in ("converged", "mala_acceptance", "frac_negative_draws") else None


def _prior(config: dict) -> float:
    sampler = config["sampler"]
    return (
        2.0
        + 0.002
        * sampler["num_chains"]
        * (sampler["num_draws"] + sampler["num_burnin"])
        * config["n_docs"]
        / 16
    )


def _uses_accelerator(config: dict) -> bool:
    device = config["sampler"]["device"] or ""
    return device == "auto" or device.startswith("cuda")


KIND = UnitKind(
    "llc",
    SETTINGS,
    _resolve,
    _run,
    primary_metric="llc",
    seconds_prior=_prior,
    metric_bounds=_bounds,
    uses_accelerator=_uses_accelerator,
)
