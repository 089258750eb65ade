"""The eigenform experiment: seeds x arms (process variants) x perturbation scales, paired over t.

The measurements (the cycle, the probe, the paired runs) live in :mod:`persona_basins.measure.eigenform`,
the estimators and the verdict in :mod:`persona_basins.measure.eigenform_verdicts`; this module chooses the
scales, runs the grid, summarises it over seeds and writes the ``eigenform`` run folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import check, param
from ..errors import ConfigError, UserError
from ..measure.eigenform import ARMS, VARIANTS, EigenformConfig, Probe, run_paired
from ..measure.eigenform_verdicts import breaking, contraction_factor, last_safe_scale, return_rate, verdict
from ..models.edits import adapter_on_copy, clean_base, is_peft, lora_deltas, merged_copy
from ..results import StudyResult
from ..stats import format_interval, mean_interval, rate_interval

# the static scan that places the perturbations: the first grid point where the static model breaks, and
# the grid point nearest half of it (a sub-threshold perturbation)
SCAN = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
FULL = {"cycles": 6, "seeds": 5, "arms": VARIANTS}
FAST = {"cycles": 2, "seeds": 2, "arms": VARIANTS}
FAST_CONFIG = {"n_prompts": 32, "sleep_steps": 8, "n_candidates": 2}
HEADLINE = (
    "verdict",
    "return_rate",
    "contraction_factor",
    "static_safe_scale",
    "static_break_scale",
    "return_rate_by_variant",
    "paired_contraction_by_variant",
    "behavioural_contraction_by_variant",
    "final_misalignment_by_variant",
    "final_wellformed_by_variant",
)


@dataclass(frozen=True)
class EigenformRunConfig:
    """The grid of one eigenform run (the ``eigenform`` command's run flags, the sweep's settings)."""

    cycles: int | None = param(None, ge=1, help="perceive-act-think-sleep cycles (default: 6, fast: 2)")
    seeds: int | None = param(None, ge=1, help="seeds of each arm (default: 5, fast: 2)")
    ts: list[float] = param(
        default_factory=list, ge=0, help="perturbation scales (empty: from the static scan)"
    )
    fast: bool = param(False, help="the fast settings (fewer prompts, cycles and seeds)")
    arms: list[str] = param(default_factory=list, choices=tuple(ARMS), help="process variants (empty: all)")

    def __post_init__(self):
        check(self)


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


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(
            "EigenformConfig", "sleep_lr", f"is too large: {what} is {value}, the process diverged"
        )
    return value


def choose_scales(static_scan: dict[float, dict], cfg: EigenformConfig) -> dict:
    """The breaking scale (first scan point where the static model is broken) and one below it
    (nearest half)."""
    ts = sorted(static_scan)
    brk = breaking(
        [static_scan[t]["broad_misalignment"] for t in ts],
        cfg.safe_level,
        static_wellformed=[static_scan[t]["wellformed"] for t in ts],
        wellformed_level=cfg.wellformed_level,
    )
    if not any(brk):
        return {"break": None, "below": ts[len(ts) // 2], "run": [ts[len(ts) // 2], ts[-1]]}
    t_break = ts[brk.index(True)]
    below = [t for t in ts if t < t_break]
    t_below = min(below, key=lambda t: (abs(t - t_break / 2), t)) if below else t_break / 2
    return {"break": t_break, "below": t_below, "run": [t_below, t_break]}


def run_eigenform(
    org,
    adapter_dir_or_peft_model,
    *,
    cycles: int | None = None,
    seeds: int | None = None,
    ts: Sequence[float] | None = None,
    fast: bool = False,
    progress: bool = False,
    config: EigenformConfig | None = None,
    arms: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """The eigenform experiment: the result holds no folder (``run_dir`` None) and the ``metrics.json`` dict
    (the headline stats at top level).

    ``ts`` None: the static model is scanned over ``SCAN`` and the process runs at the first scale where
    it breaks and at one below (``choose_scales``); ``t = 0`` (the unperturbed trajectory every paired
    distance is measured against) is always added. ``fast`` uses smaller defaults (2 cycles, 2 seeds, 32
    requests, 2 candidates and 8 sleep steps per cycle) for the demo; explicit arguments override them.
    """
    preset = FAST if fast else FULL
    cycles = preset["cycles"] if cycles is None else int(cycles)
    seeds = preset["seeds"] if seeds is None else int(seeds)
    arms = tuple(preset["arms"] if arms is None else arms)
    if cycles <= 0:
        raise UserError(f"cycles must be >= 1, got {cycles}")
    if seeds <= 0:
        raise UserError(f"seeds must be >= 1, got {seeds}")
    if ts is not None and (not ts or any(not math.isfinite(t) or t < 0 for t in ts)):
        raise UserError("the perturbation grid must be non-empty finite scales t >= 0")
    if not arms:
        raise UserError("no eigenform arm given")
    cfg = config or EigenformConfig()
    if fast and config is None:
        cfg = replace(cfg, **FAST_CONFIG)
    arm_cfgs = {a: cfg.for_arm(a) for a in arms}
    world = org.world
    try:
        world.system_words(cfg.context)
    except ValueError as e:
        raise UserError(str(e)) from None
    t0 = time.time()
    base, deltas = resolve_adapter(org, adapter_dir_or_peft_model)
    probe = Probe.build(org.with_model(base), cfg.vector_layer)
    scan = {t: probe(merged_copy(base, deltas, t)) for t in SCAN}
    scan_m = [scan[t]["broad_misalignment"] for t in SCAN]
    scan_wf = [scan[t]["wellformed"] for t in SCAN]
    chosen = choose_scales(scan, cfg)
    run_ts = tuple(sorted({0.0, *(float(t) for t in (chosen["run"] if ts is None else ts))}))
    starts = {t: merged_copy(base, deltas, t) for t in run_ts}
    static = {t: scan[t] if t in scan else probe(m) for t, m in starts.items()}
    static_m = [static[t]["broad_misalignment"] for t in run_ts]
    static_wf = [static[t]["wellformed"] for t in run_ts]
    brk = breaking(
        static_m, cfg.safe_level, static_wellformed=static_wf, wellformed_level=cfg.wellformed_level
    )

    from ..progress import track

    traces: dict = {a: [[None] * seeds for _ in run_ts] for a in arms}
    runs = [(a, s) for a in arms for s in range(seeds)]
    for a, s in track(runs, "eigenform", unit="runs", enabled=progress):
        paired = run_paired(org, starts, probe, cycles=cycles, seed=s, cfg=arm_cfgs[a])
        for i, t in enumerate(run_ts):
            tr = paired[t]
            for key in ("broad_misalignment", "wellformed", "distance", "paired_distance"):
                for k, v in enumerate(tr[key]):
                    _finite(v, f"{key} at cycle {k} (arm {a}, t={t:g}, seed {s})")
            traces[a][i][s] = tr

    def stats(arm: str) -> dict:
        tr = traces[arm]
        n_t = len(run_ts)
        final = [[tr[i][s]["broad_misalignment"][-1] for i in range(n_t)] for s in range(seeds)]
        final_wf = [[tr[i][s]["wellformed"][-1] for i in range(n_t)] for s in range(seeds)]
        wl = cfg.wellformed_level
        pos = [i for i, t in enumerate(run_ts) if t > 0]

        def over_cycles(key: str, i: int, lo=None, hi=None) -> dict:
            rows = np.array([tr[i][s][key] for s in range(seeds)], dtype=float)
            per_k = [
                (rate_interval(rows[:, k], lo=lo, hi=hi) if lo is not None else mean_interval(rows[:, k]))
                for k in range(rows.shape[1])
            ]
            return {
                "cycle": list(range(rows.shape[1])),
                "mean": [p.value for p in per_k],
                "ci_low": [p.low for p in per_k],
                "ci_high": [p.high for p in per_k],
                "per_seed": rows.tolist(),
                "n": seeds,
            }

        brk_idx = [i for i in range(n_t) if brk[i]]
        return {
            "return_rate": rate_interval(
                [
                    return_rate(
                        static_m,
                        f,
                        cfg.return_level,
                        break_level=cfg.safe_level,
                        final_wellformed=w,
                        static_wellformed=static_wf,
                        wellformed_level=wl,
                    )
                    for f, w in zip(final, final_wf)
                ],
                undefined="no scale of the run breaks the static model: nothing to return from",
            ).to_dict(),
            "paired_contraction": mean_interval(
                [contraction_factor([tr[i][s]["paired_distance"] for i in pos]) for s in range(seeds)],
                undefined="a paired distance reached 0 or fewer than 2 cycles",
            ).to_dict(),
            # the same fit on the paired behavioural distance (TV between the persona distributions, which sum
            # to the well-formed mass): does the behaviour come back geometrically, whatever the weights do
            "behavioural_contraction": mean_interval(
                [contraction_factor([tr[i][s]["paired_tv"] for i in pos]) for s in range(seeds)],
                undefined="a paired TV reached 0 or fewer than 2 cycles",
            ).to_dict(),
            # the paired distance can shrink by at most the path the process travels (the sum of
            # successive distances)
            "path_length": {
                f"{run_ts[i]:g}": mean_interval(
                    [float(np.sum(tr[i][s]["distance"])) for s in range(seeds)]
                ).to_dict()
                for i in pos
            },
            "paired_contraction_by_t": {
                f"{run_ts[i]:g}": mean_interval(
                    [contraction_factor(tr[i][s]["paired_distance"]) for s in range(seeds)],
                    undefined="fewer than 2 cycles",
                ).to_dict()
                for i in pos
            },
            "process_safe_scale": mean_interval(
                [
                    last_safe_scale(run_ts, f, cfg.safe_level, wellformed=w, wellformed_level=wl)
                    for f, w in zip(final, final_wf)
                ]
            ).to_dict(),
            "final_misalignment": [
                rate_interval([final[s][i] for s in range(seeds)]).to_dict() for i in range(n_t)
            ],
            "final_wellformed": [
                rate_interval([final_wf[s][i] for s in range(seeds)]).to_dict() for i in range(n_t)
            ],
            "final_misalignment_at_break": (
                rate_interval(
                    [float(np.mean([final[s][i] for i in brk_idx])) for s in range(seeds)]
                ).to_dict()
                if brk_idx
                else None
            ),
            "final_wellformed_at_break": (
                rate_interval(
                    [float(np.mean([final_wf[s][i] for i in brk_idx])) for s in range(seeds)]
                ).to_dict()
                if brk_idx
                else None
            ),
            "paired_distance": {f"{run_ts[i]:g}": over_cycles("paired_distance", i) for i in pos},
            "paired_gap": {f"{run_ts[i]:g}": over_cycles("paired_gap", i) for i in pos},
            "paired_tv": {f"{run_ts[i]:g}": over_cycles("paired_tv", i, 0.0, 1.0) for i in pos},
            "distance": {f"{t:g}": over_cycles("distance", i) for i, t in enumerate(run_ts)},
            "clip_fraction": {
                f"{t:g}": over_cycles("clip_fraction", i, 0.0, 1.0) for i, t in enumerate(run_ts)
            },
            "grad_norm_max": {f"{t:g}": over_cycles("grad_norm_max", i) for i, t in enumerate(run_ts)},
        }

    by_arm = {a: stats(a) for a in arms}
    variants = [a for a in arms if a in VARIANTS] or list(arms)
    fm_at_break = {a: (by_arm[a]["final_misalignment_at_break"] or {}).get("mean") for a in variants}
    ver = verdict({a: by_arm[a]["return_rate"] for a in variants}, fm_at_break)
    head = by_arm[ver["closest"] or variants[0]]
    out = {
        "verdict": ver,
        "return_rate": head["return_rate"],
        "contraction_factor": head["paired_contraction"],
        # deterministic numbers (the static model does not depend on the seed): no interval
        "static_safe_scale": last_safe_scale(
            SCAN, scan_m, cfg.safe_level, wellformed=scan_wf, wellformed_level=cfg.wellformed_level
        ),
        "static_break_scale": chosen["break"],
        "return_rate_by_variant": {a: by_arm[a]["return_rate"] for a in arms},
        "paired_contraction_by_variant": {a: by_arm[a]["paired_contraction"] for a in arms},
        "behavioural_contraction_by_variant": {a: by_arm[a]["behavioural_contraction"] for a in arms},
        "final_misalignment_by_variant": {a: by_arm[a]["final_misalignment_at_break"] for a in arms},
        "final_wellformed_by_variant": {a: by_arm[a]["final_wellformed_at_break"] for a in arms},
        "ts": list(run_ts),
        "breaking": brk,
        "cycles": cycles,
        "seeds": seeds,
        "arms": list(arms),
        "settings": {
            **cfg.to_dict(),
            "vector_layer": probe.layer,
            "fast": fast,
            "arms": {a: ARMS[a] for a in arms},
        },
        "scan": {"t": list(SCAN), "broad_misalignment": scan_m, "wellformed": scan_wf},
        "static": {
            "broad_misalignment": static_m,
            "projection": [static[t]["projection"] for t in run_ts],
            "persona": [static[t]["persona"] for t in run_ts],
            "wellformed": static_wf,
        },
        "by_arm": by_arm,
        "traces": traces,
        "seconds": time.time() - t0,
    }
    out["eigenform"] = {k: out[k] for k in HEADLINE}  # the explorer's headline view of a run folder
    if log:
        log(summary_table(out))
    return StudyResult(None, out)


def run_eigenform_command(
    organism: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    cycles: int | None,
    seeds: int | None,
    ts: Sequence[float] | None,
    fast: bool,
    config: EigenformConfig,
    progress: bool,
    arms: Sequence[str] | None = None,
) -> StudyResult:
    """``persona-basins eigenform``: check the adapter, run, write the run folder ``out``."""
    from ..models.organism import load_organism
    from ..results import RunDir

    org = load_organism(organism)
    adapter_on_copy(org.model, adapter)  # a wrong adapter fails before the run folder is made
    for a in arms or ():
        config.for_arm(a)  # an unknown arm fails before the run folder is made
    run = RunDir(
        out,
        "eigenform",
        {
            "organism": str(Path(organism).resolve()),
            "adapter": str(Path(adapter).resolve()),
            "cycles": cycles,
            "seeds": seeds,
            "ts": list(ts) if ts else None,
            "fast": fast,
            "arms": list(arms) if arms else None,
            "eigenform": config.to_dict(),
        },
    )
    m = run_eigenform(
        org,
        adapter,
        cycles=cycles,
        seeds=seeds,
        ts=ts,
        fast=fast,
        progress=progress,
        config=config,
        arms=arms,
    ).metrics
    run.config.update(cycles=m["cycles"], seeds=m["seeds"], ts=m["ts"], arms=m["arms"])
    run.write_metrics(m)
    return StudyResult(run.path, m)


def _scale(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_table(m: dict) -> str:
    lines = [f"{'t':>6}  {'static':>8}  " + "  ".join(f"{a + ' after N':>24}" for a in m["arms"])]
    for i, t in enumerate(m["ts"]):
        row = f"{t:>6.2f}  {m['static']['broad_misalignment'][i]:>8.3f}  "
        cells = (format_interval(m["by_arm"][a]["final_misalignment"][i]) for a in m["arms"])
        row += "  ".join(f"{cell:>24}" for cell in cells)
        lines.append(row + ("   <- breaks the static model" if m["breaking"][i] else ""))
    lines.append(
        f"static_safe_scale {_scale(m['static_safe_scale'])}, static_break_scale "
        f"{_scale(m['static_break_scale'])} (scan grid points; deterministic)"
    )
    for a in m["arms"]:
        b = m["by_arm"][a]
        lines.append(
            f"[{a}] return_rate {format_interval(b['return_rate'])}  paired contraction (weights "
            f"{format_interval(b['paired_contraction'])}, "
            f"behaviour {format_interval(b['behavioural_contraction'])})  "
            f"well-formed at break {format_interval(b['final_wellformed_at_break'])}"
        )
    v = m["verdict"]
    lines.append(f"verdict: {v['answer']} (closest: {v['closest']}; {v['reason']})")
    return "\n".join(lines)
