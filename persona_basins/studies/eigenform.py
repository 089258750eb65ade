"""The eigenform experiment: seeds x arms x perturbation scales of the wake-perceive-act-sleep process.

The measurements (the cycle, the probe, the estimators) live in :mod:`persona_basins.measure.eigenform`;
this module runs the grid, summarises it over seeds and writes the ``eigenform`` run folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..measure.eigenform import (
    ARMS,
    EigenformConfig,
    Probe,
    contraction_factor,
    last_safe_scale,
    return_rate,
    run_process,
)
from ..models.edits import adapter_on_copy, clean_base, is_peft, lora_deltas, merged_copy
from ..stats import ci95, rate_interval

FULL = {"cycles": 8, "seeds": 5, "ts": (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)}
FAST = {"cycles": 3, "seeds": 2, "ts": (1.0, 2.0)}
FAST_CONFIG = {"n_prompts": 128, "sleep_steps": 10}
HEADLINE = ("return_rate", "static_safe_scale", "process_safe_scale", "contraction_factor")


def resolve_adapter(org, adapter_dir_or_peft_model):
    """(clean base model, LoRA deltas) from an adapter folder or a PEFT model of the organism."""
    from ..models.edits import base_fingerprint

    if is_peft(adapter_dir_or_peft_model):
        peft_model = adapter_dir_or_peft_model
        base = clean_base(peft_model)
        want, have = base_fingerprint(org.model), base_fingerprint(base)
        diff = [k for k in want if want[k] != have.get(k)]
        if diff:
            raise UserError(f"the adapter's base model is not this organism (differs in: {', '.join(diff)})")
    else:
        peft_model = adapter_on_copy(org.model, adapter_dir_or_peft_model)
        base = clean_base(peft_model)
    base.eval()
    return base, lora_deltas(peft_model)


def _rate(values, why_undefined: str) -> dict:
    """A rate over seeds with an in-range interval; undefined per-seed values make it null, with the reason."""
    if any(not math.isfinite(v) for v in values):
        return {"mean": None, "ci_low": None, "ci_high": None, "n": len(values),
                "per_seed": [v if math.isfinite(v) else None for v in values], "reason": why_undefined}
    return rate_interval(values)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise UserError(f"eigenform: {what} is {value}; the process diverged (lower --sleep-lr)")
    return value


def run_eigenform(org, adapter_dir_or_peft_model, *, cycles: int | None = None, seeds: int | None = None,
                  ts: Sequence[float] | None = None, fast: bool = False, progress: bool = False,
                  config: EigenformConfig | None = None, arms: Sequence[str] = ARMS,
                  log: Callable[[str], None] | None = None) -> dict:
    """The eigenform experiment; returns the ``metrics.json`` dict (the headline stats at top level).

    ``fast`` uses smaller defaults (3 cycles, 2 seeds, t in {1, 2}, 128 requests and 10 sleep steps
    per cycle) for the demo; explicit ``cycles`` / ``seeds`` / ``ts`` / ``config`` override them.
    """
    preset = FAST if fast else FULL
    cycles = preset["cycles"] if cycles is None else int(cycles)
    seeds = preset["seeds"] if seeds is None else int(seeds)
    ts = tuple(float(t) for t in (preset["ts"] if ts is None else ts))
    if cycles <= 0:
        raise UserError(f"--cycles must be > 0, got {cycles}")
    if seeds <= 0:
        raise UserError(f"--seeds must be > 0, got {seeds}")
    if not ts or any(not math.isfinite(t) or t < 0 for t in ts):
        raise UserError("the perturbation grid must be non-empty finite scales t >= 0")
    ts = tuple(sorted(set(ts)))
    cfg = config or EigenformConfig()
    if fast and config is None:
        cfg = replace(cfg, **FAST_CONFIG)
    for a in arms:
        if a not in ARMS:
            raise ValueError(f"unknown arm {a!r}")
    world, vocab = org.world, org.vocab
    try:
        world.system_words(cfg.context)
    except ValueError as e:
        raise UserError(str(e)) from None
    t0 = time.time()
    base, deltas = resolve_adapter(org, adapter_dir_or_peft_model)
    probe = Probe.build(base, world, vocab, cfg.vector_layer)
    starts = {t: merged_copy(base, deltas, t) for t in ts}
    static = {t: probe(m) for t, m in starts.items()}
    contexts = {"identity": cfg.context, "no_identity": "none"}

    from tqdm.auto import tqdm

    jobs = [(a, t, s) for a in arms for t in ts for s in range(seeds)]
    traces: dict = {a: [[None] * seeds for _ in ts] for a in arms}
    for a, t, s in tqdm(jobs, desc="eigenform", disable=not progress, leave=False):
        arm_cfg = cfg if a == "identity" else replace(cfg, self_filter=False)
        tr = run_process(starts[t], world, vocab, probe, cycles=cycles, seed=s, context=contexts[a], cfg=arm_cfg)
        for key in ("broad_misalignment", "wellformed", "distance"):
            for k, v in enumerate(tr[key]):
                _finite(v, f"{key} at cycle {k} (arm {a}, t={t:g}, seed {s})")
        traces[a][ts.index(t)][s] = tr
    static_m = [static[t]["broad_misalignment"] for t in ts]

    def stats(arm: str) -> dict:
        tr = traces[arm]
        final = [[tr[i][s]["broad_misalignment"][-1] for i in range(len(ts))] for s in range(seeds)]
        final_wf = [[tr[i][s]["wellformed"][-1] for i in range(len(ts))] for s in range(seeds)]
        wl = cfg.wellformed_level
        return {
            "process_safe_scale": ci95([last_safe_scale(ts, f, cfg.safe_level, wellformed=w, wellformed_level=wl)
                                        for f, w in zip(final, final_wf)]),
            "return_rate": _rate([return_rate(static_m, f, cfg.return_level, final_wellformed=w,
                                              wellformed_level=wl) for f, w in zip(final, final_wf)],
                                 "no grid point where the static model is misaligned: nothing to return from"),
            "contraction_factor": ci95([contraction_factor([tr[i][s]["distance"] for i in range(len(ts))])
                                        for s in range(seeds)]),
            "final_misalignment": [rate_interval([final[s][i] for s in range(seeds)]) for i in range(len(ts))],
            "final_wellformed": [rate_interval([final_wf[s][i] for s in range(seeds)]) for i in range(len(ts))],
        }

    by_arm = {a: stats(a) for a in arms}
    head = by_arm.get("identity") or by_arm[arms[0]]
    out = {
        "return_rate": head["return_rate"],
        # one deterministic number (the static model does not depend on the seed): no interval
        "static_safe_scale": last_safe_scale(ts, static_m, cfg.safe_level,
                                             wellformed=[static[t]["wellformed"] for t in ts],
                                             wellformed_level=cfg.wellformed_level),
        "process_safe_scale": head["process_safe_scale"],
        "contraction_factor": head["contraction_factor"],
        "ts": list(ts),
        "cycles": cycles,
        "seeds": seeds,
        "arms": list(arms),
        "settings": {**cfg.to_dict(), "vector_layer": probe.layer, "fast": fast},
        "static": {"broad_misalignment": static_m,
                   "projection": [static[t]["projection"] for t in ts],
                   "persona": [static[t]["persona"] for t in ts],
                   "wellformed": [static[t]["wellformed"] for t in ts]},
        "by_arm": by_arm,
        "traces": traces,
        "seconds": time.time() - t0,
    }
    for a in arms:
        if a != "identity":
            for k in ("return_rate", "process_safe_scale", "contraction_factor"):
                out[f"{k}_{a}"] = by_arm[a][k]
    if log:
        log(summary_table(out))
    return out


def run_eigenform_command(organism: str | Path, adapter: str | Path, out: str | Path, *, cycles: int | None,
                          seeds: int | None, ts: Sequence[float] | None, fast: bool,
                          config: EigenformConfig, progress: bool) -> dict:
    """``persona-basins eigenform``: check the adapter, run, write the run folder; returns ``{metrics, run}``."""
    from ..models.organism import load_organism
    from ..results import RunDir

    org = load_organism(organism)
    adapter_on_copy(org.model, adapter)  # a wrong adapter fails before the run folder is made
    run = RunDir(out, "eigenform", {"organism": str(Path(organism).resolve()),
                                    "adapter": str(Path(adapter).resolve()), "cycles": cycles, "seeds": seeds,
                                    "ts": list(ts) if ts else None, "fast": fast, "eigenform": config.to_dict()})
    m = run_eigenform(org, adapter, cycles=cycles, seeds=seeds, ts=ts, fast=fast, progress=progress,
                      config=config)
    run.config.update(cycles=m["cycles"], seeds=m["seeds"], ts=m["ts"])
    run.write_config()
    run.write_metrics(m)
    return {"metrics": m, "run": run}


def summary_table(m: dict) -> str:
    def fmt(s):
        if isinstance(s, int | float):
            return f"{s:.3f}"
        if s["mean"] is None or not math.isfinite(s["mean"]):
            return f"n/a ({s['reason']})" if s.get("reason") else "n/a"
        lo, hi = s["ci_low"], s["ci_high"]
        if lo is None or not math.isfinite(lo):
            return f"{s['mean']:.3f}"
        return f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [f"{'t':>6}  {'static':>8}  " + "  ".join(f"{a + ' after N':>22}" for a in m["arms"])]
    for i, t in enumerate(m["ts"]):
        row = f"{t:>6.2f}  {m['static']['broad_misalignment'][i]:>8.3f}  "
        row += "  ".join(f"{fmt(m['by_arm'][a]['final_misalignment'][i]):>22}" for a in m["arms"])
        lines.append(row)
    lines.append(f"static_safe_scale   {fmt(m['static_safe_scale'])} (last grid t still safe; deterministic)")
    for a in m["arms"]:
        b = m["by_arm"][a]
        lines.append(f"[{a}] process_safe_scale {fmt(b['process_safe_scale'])}  return_rate "
                     f"{fmt(b['return_rate'])}  contraction {fmt(b['contraction_factor'])}")
    return "\n".join(lines)
