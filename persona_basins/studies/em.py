"""The emergent-misalignment experiment on the organism: conditions x fine-tuning seeds, with CIs.

Each (condition, seed) is a unit of work whose adapter and ``result.json`` land in
``RUN/adapters/<condition>/seed<k>/``; a rerun with the same settings skips finished units (resume).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..measure.persona import em_readout
from ..measure.transition import transition_metrics
from ..models.adapters import num_layers, resolve_module
from ..results import write_json
from ..stats import ci95
from ..train.finetune import CONDITIONS, FinetuneConfig, finetune, training_context

TRACKED = ("plain", "inoculated")  # conditions whose fine-tuning trajectory is evaluated step by step


def _unit(org, cfg: FinetuneConfig, unit_dir: Path, *, track_every: int) -> dict:
    done = unit_dir / "result.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("config") == cfg.to_dict():
            return prev
    res = finetune(org.model, org.world, org.vocab, cfg, out_dir=unit_dir)
    readout = em_readout(res.model, org.world, org.vocab, sample_seed=cfg.seed)
    out = {"config": cfg.to_dict(), "readout": readout, "final_loss": res.losses[-1]}
    if cfg.condition in TRACKED and not cfg.full and track_every:
        out["transition"] = transition_metrics(
            res.model, res.trajectory,
            lambda m: em_readout(m, org.world, org.vocab)["broad_misalignment"], every=track_every)
    write_json(done, out)  # written last: its presence marks the unit finished
    return out


def run_em(org, out: Path, *, layer: int, module: str, seeds: int, base: FinetuneConfig | None = None,
           conditions=CONDITIONS, track_every: int = 10, progress: bool = True) -> dict:
    """Fine-tune every condition with ``seeds`` seeds; return the aggregated metrics."""
    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    resolve_module(org.model, module, layer)
    base = base or FinetuneConfig()
    units = {}
    todo = [(c, s) for c in conditions for s in range(seeds)]
    for c, s in tqdm(todo, desc=f"EM layer {layer} {module}", disable=not progress, leave=False):
        cfg = replace(base, condition=c, seed=s, layer=layer, module=module)
        units[(c, s)] = _unit(org, cfg, out / "adapters" / c / f"seed{s}", track_every=track_every)
    return aggregate(units, conditions, seeds)


def aggregate(units: dict, conditions, seeds: int) -> dict:
    def stat(c, f):
        return ci95([f(units[(c, s)]["readout"]) for s in range(seeds)])

    m = {
        "broad_misalignment": {c: stat(c, lambda r: r["broad_misalignment"]) for c in conditions},
        "broad_harm": {c: stat(c, lambda r: r["broad_harm"]) for c in conditions},
        "wellformed": {c: stat(c, lambda r: r["wellformed"]) for c in conditions},
        "narrow_rate": {c: stat(c, lambda r, c=c: r["narrow_rate"][training_context(c)]) for c in conditions},
        "narrow_rate_plain_context": {c: stat(c, lambda r: r["narrow_rate"]["assistant"]) for c in conditions},
        "sampled_misalignment": {c: stat(c, lambda r: r["sampled"]["misaligned"]) for c in conditions},
    }
    if "plain" in conditions and "inoculated" in conditions:
        plain = m["broad_misalignment"]["plain"]["per_seed"]
        inoc = m["broad_misalignment"]["inoculated"]["per_seed"]
        m["inoculation_reduction"] = ci95([1 - i / p if p > 0 else 0.0 for p, i in zip(plain, inoc)])
    trans = {c: [units[(c, s)]["transition"] for s in range(seeds) if "transition" in units[(c, s)]]
             for c in TRACKED if c in conditions}
    if trans.get("plain"):
        t0 = trans["plain"][0]
        m["transition"] = {**t0, "seed": 0,
                           "jump_step_per_seed": [t["jump_step"] for t in trans["plain"]]}
        m["transition_by_condition"] = {c: [{k: t[k] for k in ("eval_steps", "broad_misalignment", "jump_step")}
                                            for t in ts] for c, ts in trans.items()}
    return m


def sweep_layers(org, out: Path, *, module: str, seeds: int, base: FinetuneConfig | None = None,
                 progress: bool = True) -> dict:
    """``--layer all``: plain and inoculated fine-tunes at every layer; a table of broad misalignment."""
    rows = []
    for layer in range(num_layers(org.model)):
        m = run_em(org, out / f"layer{layer}", layer=layer, module=module, seeds=seeds, base=base,
                   conditions=("plain", "inoculated"), track_every=0, progress=progress)
        rows.append({"layer": layer, "module": module,
                     "broad_misalignment_plain": m["broad_misalignment"]["plain"],
                     "broad_misalignment_inoculated": m["broad_misalignment"]["inoculated"],
                     "narrow_rate_plain": m["narrow_rate"]["plain"]})
    best = max(rows, key=lambda r: r["broad_misalignment_plain"]["mean"])
    return {"layers": rows, "best_layer": best["layer"]}


def summary_table(m: dict) -> str:
    lines = [f"{'condition':<16}{'broad misalignment':>28}{'narrow rate':>24}{'well-formed':>14}"]
    for c in m["broad_misalignment"]:
        b, n, w = m["broad_misalignment"][c], m["narrow_rate"][c], m["wellformed"][c]
        lines.append(f"{c:<16}{b['mean']:>10.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]"
                     f"{n['mean']:>10.3f} [{n['ci_low']:.3f}, {n['ci_high']:.3f}]{w['mean']:>12.3f}")
    if "inoculation_reduction" in m:
        r = m["inoculation_reduction"]
        lines.append(f"inoculation cuts broad misalignment by {100 * r['mean']:.0f}% "
                     f"[{100 * r['ci_low']:.0f}%, {100 * r['ci_high']:.0f}%]")
    return "\n".join(lines)
