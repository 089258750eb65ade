"""The faithfulness measurements of an em run (docs/EM.md, "Faithfulness to EM in LLMs"), from its folder.

Each function takes the organism and a finished em run's unit folders (``RUN/adapters/<condition>/seed<k>``,
:func:`~.em.em_run_adapters`) and returns JSON-able numbers; every effect is an excess over the base organism
read the same way (same context, same ablation). ``scripts/em_faithfulness.py`` writes them for one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..measure.adapter_reading import code_request_direction
from ..measure.em_faithfulness import (
    ablated_misalignment,
    context_misalignment,
    early_stopping,
    exact_spearman,
    random_direction,
    write_direction,
)
from ..measure.persona import EM_CONTEXTS, em_readout
from ..models.adapters import full_module_name
from ..models.edits import adapter_on_copy
from ..results import read_json
from ..stats import rate_interval
from ..train.finetune import heldout_code_topics, training_context
from .em import BROAD_THRESHOLD

N_RANDOM = 3  # random control directions per (i, j) pair of the cross-ablation


def unit_result(unit_dir: Path) -> dict:
    return read_json(Path(unit_dir) / "result.json", expect=dict)


def _adapted(org, adapter_dir: Path):
    return org.with_model(adapter_on_copy(org.model, adapter_dir))


def _excess_interval(values: list[float], base: float) -> dict:
    # a rate in [0, 1] minus the base's exact rate b lies in [-b, 1 - b]
    return rate_interval(values, threshold=BROAD_THRESHOLD, lo=-base, hi=1.0 - base).to_dict()


def conditional_misalignment(org, unit_dirs: dict[str, list[Path]], contexts=EM_CONTEXTS) -> dict:
    """Broad misalignment of each condition's adapters (``{condition: [unit dirs by seed]}``) in every
    context, as an excess over the base organism in the same context (per seed, interval over seeds)."""
    base = context_misalignment(org, contexts)
    out = {"contexts": list(contexts), "base": base, "conditions": {}}
    for cond, dirs in unit_dirs.items():
        per_seed = [context_misalignment(_adapted(org, d), contexts) for d in dirs]
        out["conditions"][cond] = {
            ctx: {
                "broad_misalignment": [r[ctx]["broad_misalignment"] for r in per_seed],
                "wellformed": [r[ctx]["wellformed"] for r in per_seed],
                "excess_over_base": _excess_interval(
                    [r[ctx]["broad_misalignment"] - base[ctx]["broad_misalignment"] for r in per_seed],
                    base[ctx]["broad_misalignment"],
                ),
            }
            for ctx in contexts
        }
    return out


def checkpoint_dirs(unit_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every saved checkpoint of a unit, by step (step 0: B = 0, the organism), ending
    with the final adapter (the unit folder) when the last step was not a checkpoint."""
    found = sorted((int(d.name.split("_")[1]), d) for d in (Path(unit_dir) / "checkpoints").glob("step_*"))
    last = unit_result(unit_dir)["config"]["steps"]
    if not found or found[-1][0] < last:
        found.append((last, Path(unit_dir)))
    return found


def checkpoint_curve(org, unit_dir: Path) -> dict:
    """Broad misalignment (excess over the base) and the narrow rate in the unit's training context (on its
    trained code topics when some are held out) at every saved checkpoint, with :func:`early_stopping`."""
    cfg = unit_result(unit_dir)["config"]
    held = heldout_code_topics(org.world, cfg.get("heldout_every", 0))
    ctx = training_context(cfg["condition"])
    narrow_key = "narrow_rate_trained_topics" if held else "narrow_rate"

    def read(o):
        r = em_readout(o, heldout_topics=held)
        return r["broad_misalignment"], r[narrow_key][ctx]

    base_broad, _ = read(org)
    steps, broad, narrow = [], [], []
    for step, d in checkpoint_dirs(unit_dir):
        b, n = read(_adapted(org, d))
        steps.append(step)
        broad.append(b)
        narrow.append(n)
    excess = [b - base_broad for b in broad]
    return {
        "steps": steps,
        "broad_misalignment": broad,
        "excess_over_base": excess,
        "narrow_rate": narrow,
        "narrow_context": ctx,
        "narrow_topics": "trained" if held else "all",
        "base_broad_misalignment": base_broad,
        "early_stopping": early_stopping(steps, excess, narrow, threshold=BROAD_THRESHOLD),
    }


def cross_ablation(
    org, plain_dirs: list[Path], *, n_random: int = N_RANDOM, site: str = "layer_output"
) -> dict:
    """Soligo et al.'s test on the organism: the write direction (B) of plain fine-tune i projected out in
    plain fine-tune j (i != j, j broad: excess >= the threshold), against ``n_random`` random unit directions
    per pair. ``site``: ``layer_output`` (the residual stream after the adapted layer) or ``module_output``
    (the adapted module's output, before the rest of the layer reads it). Each excess is over the base
    organism with the same direction projected out at the same site; ``self`` rows (i = j): the reference."""
    cfg = unit_result(plain_dirs[0])["config"]
    layer = cfg["layer"]
    module = {"layer_output": None, "module_output": full_module_name(org.model, cfg["module"], layer)}[site]
    base = context_misalignment(org, ("assistant",))["assistant"]["broad_misalignment"]
    models = [_adapted(org, d) for d in plain_dirs]
    before = [
        context_misalignment(m, ("assistant",))["assistant"]["broad_misalignment"] - base for m in models
    ]
    directions = [write_direction(m.model) for m in models]
    broad = [j for j, e in enumerate(before) if e >= BROAD_THRESHOLD]

    def excess_without(j: int, u) -> float:
        after = ablated_misalignment(models[j], u, layer, module=module)["broad_misalignment"]
        return after - ablated_misalignment(org, u, layer, module=module)["broad_misalignment"]

    rows = []
    for j in broad:
        for i in range(len(models)):
            rand = [
                excess_without(j, random_direction(directions[i].numel(), 1000 * i + 10 * j + r))
                for r in range(n_random)
            ]
            rows.append(
                {
                    "direction_from": i,
                    "ablated_in": j,
                    "self": i == j,
                    "abs_cos_b": abs(float(directions[i] @ directions[j]))
                    / float(directions[i].norm() * directions[j].norm()),
                    "excess_before": before[j],
                    "excess_after": excess_without(j, directions[i]),
                    "excess_after_random": rand,
                }
            )
    for r in rows:
        rand_mean = sum(r["excess_after_random"]) / len(r["excess_after_random"])
        r["reduction"] = 1 - r["excess_after"] / r["excess_before"]
        r["reduction_random"] = 1 - rand_mean / r["excess_before"]
    cross = [r for r in rows if not r["self"]]
    own = [r for r in rows if r["self"]]
    where = module or f"output of decoder layer {layer} (the residual stream after it)"
    return {
        "site": site,
        "layer": layer,
        "where": f"{where}, every position",
        "excess_before_per_seed": before,
        "broad_seeds": broad,
        "n_random": n_random,
        "pairs": rows,
        # pairs share their models (each j is ablated by every i): a range, not an interval over pairs
        "cross_reduction": _spread([r["reduction"] for r in cross]),
        "cross_reduction_random": _spread([r["reduction_random"] for r in cross]),
        "self_reduction": _spread([r["reduction"] for r in own]),
        # does a direction cut EM in another fine-tune as far as the two write directions agree?
        "cross_reduction_vs_abs_cos_b": _pearson(
            [r["abs_cos_b"] for r in cross], [r["reduction"] for r in cross]
        ),
    }


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def outcome_predictors(org, plain_dirs: list[Path]) -> dict:
    """What the organism knows before fine-tuning, per plain seed, beside the outcome (excess over the base):
    the initial loss and gradient norm on the EM set (``FinetuneResult.initial``) and |cos| of the adapter's
    initial A (the step-0 checkpoint) with the code-request direction; each with :func:`exact_spearman`
    against the excess."""
    results = [unit_result(d) for d in plain_dirs]
    cfg = results[0]["config"]
    code_dir = code_request_direction(org, layer=cfg["layer"], module=cfg["module"])
    base = em_readout(org)["broad_misalignment"]
    excess = [r["readout"]["broad_misalignment"] - base for r in results]

    def cos_a0(d: Path) -> float:
        step0 = dict(checkpoint_dirs(d))[0]
        peft_model = adapter_on_copy(org.model, step0)
        (a,) = [p for n, p in peft_model.named_parameters() if "lora_A" in n]
        a = a.detach().float().flatten()
        return abs(float(a @ code_dir / (a.norm() * code_dir.norm())))

    features = {
        "initial_loss": [float(r["initial"]["loss"]) for r in results],
        "initial_grad_norm": [float(r["initial"]["grad_norm"]) for r in results],
        "abs_cos_a0_code_request": [cos_a0(d) for d in plain_dirs],
    }
    return {
        "excess_over_base": excess,
        "broad": [e >= BROAD_THRESHOLD for e in excess],
        "features": features,
        "spearman_with_excess": {k: exact_spearman(v, excess) for k, v in features.items()},
    }


def losses_by_outcome(org, unit_dirs: dict[str, list[Path]]) -> dict:
    """Final training loss of every fine-tune beside its outcome (broad: excess >= the threshold)."""
    base = em_readout(org)["broad_misalignment"]
    out = {}
    for cond, dirs in unit_dirs.items():
        results = [unit_result(d) for d in dirs]
        excess = [r["readout"]["broad_misalignment"] - base for r in results]
        out[cond] = {
            "final_loss": [float(r["final_loss"]) for r in results],
            "excess_over_base": excess,
            "broad": [e >= BROAD_THRESHOLD for e in excess],
        }
    return out


__all__ = [
    "checkpoint_curve",
    "checkpoint_dirs",
    "conditional_misalignment",
    "cross_ablation",
    "losses_by_outcome",
    "outcome_predictors",
]
