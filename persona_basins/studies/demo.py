"""The basin study behind ``persona-basins demo``: organism -> EM +/- inoculation -> scans -> LLC along the
path -> overlap zone -> eigenform -> ``study.json`` + ``report.html``.

Each step writes ``RUN/steps/<name>.json`` when it finishes; a rerun with the same ``--out`` and settings
skips finished steps (and the EM step resumes unit by unit), so an interrupted run resumes and gives the
same numbers. A ``--out`` written with other settings is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..measure.basins import aggregate_scans
from ..results import environment, prepare_out_dir, read_json, write_json
from ..schema import validate_study
from ..stats import rate_interval
from .basins import basin_scans, load_adapters, summarize_basins
from .eigenform import HEADLINE as EIGENFORM_HEADLINE

STUDY_FORMAT = "persona-basins-study/1"
# code topics t % 3 == 2 are left out of every EM fine-tune, so the narrow rate is also read on unseen topics
EM_HELDOUT_EVERY = 3


@dataclass(frozen=True)
class DemoConfig:
    preset: str = "default"
    organism_seed: int = 0
    layer: int = 0
    module: str = "attn_out"
    seeds: int = 5
    em_steps: int = 300
    ts: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    n_random: int = 1  # random rank-1 controls per seed
    # LLC along the path: self-KL loss; step size chosen where MALA acceptance stays >= 0.75 at t=0 on the
    # default organism (1e-4 gave 0.09-0.43); short chains, so R-hat is reported, not assumed.
    llc_ts: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    llc_seeds: int = 2
    llc_chains: int = 2
    llc_draws: int = 30
    llc_burnin: int = 10
    llc_step_size: float = 1e-5
    llc_localization: float = 100.0
    llc_nbeta: float = 30.0
    llc_prompts: int = 32
    llc_batch: int = 16
    overlap_epsilon: float = 0.05
    eigenform: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ts"], d["llc_ts"] = list(self.ts), list(self.llc_ts)
        return d


DEMO_PRESETS = {
    "default": DemoConfig(),
    "tiny": DemoConfig(
        preset="tiny",
        seeds=2,
        em_steps=80,
        ts=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
        llc_ts=(0.0, 1.0, 2.0),
        llc_seeds=1,
        llc_draws=15,
        llc_burnin=5,
        llc_prompts=32,
        llc_batch=16,
    ),
}


def _step(run: Path, name: str, fn, log) -> dict:
    path = run / "steps" / f"{name}.json"
    if path.is_file():
        done = read_json(path, recover=f"delete it and rerun to recompute the {name} step")
        log(f"[{name}] done earlier; reusing {path.name}")
        return done
    t0 = time.perf_counter()
    log(f"[{name}] running ...")
    out = fn()
    write_json(path, out)
    log(f"[{name}] finished in {time.perf_counter() - t0:.0f} s")
    return json.loads(path.read_text())


def run_demo(
    out: Path, cfg: DemoConfig, *, organism_dir: Path | None = None, progress: bool = True, log=print
) -> dict:
    import torch

    from ..models.organism import is_organism, load_organism, preset_config
    from ..train.finetune import FinetuneConfig
    from .organism import build_organism

    out = Path(out)
    if organism_dir is not None and not is_organism(organism_dir):
        # checked before anything is written, so a typo never locks --out to the wrong settings
        raise UserError(
            f"--organism {organism_dir} is not an organism folder (persona-basins organism build)"
        )
    prepare_out_dir(out)
    cfg_file = out / "config.json"
    want = {
        "kind": "demo",
        "format": STUDY_FORMAT,
        **cfg.to_dict(),
        "organism": str(organism_dir) if organism_dir else None,
        "environment": environment(),
    }
    if cfg_file.is_file():
        have = read_json(cfg_file, recover="delete the --out folder to start over")
        # the environment is recorded, not matched: a resume on another thread count is allowed (its last
        # digits may differ; docs/RELIABILITY.md says what "same seed, same numbers" covers)
        settings = {k: v for k, v in want.items() if k != "environment"}
        if not isinstance(have, dict) or {k: v for k, v in have.items() if k != "environment"} != json.loads(
            json.dumps(settings)
        ):
            raise UserError(
                f"--out {out} holds a demo run with other settings; use another --out or delete it"
            )
    else:
        if out.exists() and any(p.name not in {"steps"} for p in out.iterdir()):
            raise UserError(f"--out {out} is not empty and holds no demo run")
        write_json(cfg_file, want)  # a resumed run keeps the config (and environment) it started with
    t_start = time.perf_counter()

    # 1. the organism
    org_dir = Path(organism_dir) if organism_dir else out / "organism"
    if organism_dir is None:
        build_organism(preset_config(cfg.preset, seed=cfg.organism_seed), org_dir, progress=progress, log=log)
    org = load_organism(org_dir)
    torch.manual_seed(0)

    # 2. emergent misalignment +/- inoculation (resumable per unit)
    from ..studies.em import run_em, summary_table

    em_dir = out / "em"
    em = _step(
        out,
        "em",
        lambda: run_em(
            org,
            em_dir,
            layer=cfg.layer,
            module=cfg.module,
            seeds=cfg.seeds,
            base=FinetuneConfig(steps=cfg.em_steps, heldout_every=EM_HELDOUT_EVERY),
            progress=progress,
        ),
        log,
    )
    write_json(em_dir / "metrics.json", {"kind": "em", **em})
    log(summary_table(em))

    plain = load_adapters(org, [em_dir / "adapters" / "plain" / f"seed{s}" for s in range(cfg.seeds)])
    inoc = load_adapters(org, [em_dir / "adapters" / "inoculated" / f"seed{s}" for s in range(cfg.seeds)])

    # 3. basin scans: adapter / persona / random directions, and the inoculation comparison
    scans = _step(out, "scans", lambda: basin_scans(org, plain, inoc, cfg.ts, n_random=cfg.n_random), log)
    # 4. LLC along the path (self-KL loss), full and restricted to the adapted layer
    llc = _step(out, "llc", lambda: _llc_path(org, plain, cfg, progress), log)
    # 5. the overlap zone between the aligned organism and each EM model
    overlap = _step(out, "overlap", lambda: _overlap(org, plain, cfg), log)
    # 6. eigenform identity (fast setting)
    eig = None
    if cfg.eigenform:
        from .eigenform import run_eigenform

        eig = _step(out, "eigenform", lambda: run_eigenform(org, plain[0], fast=True, progress=progress), log)

    study = assemble(cfg, em, scans, llc, overlap, eig, base_info=org.config.to_dict())
    study["elapsed_seconds_this_invocation"] = time.perf_counter() - t_start
    validate_study(study)
    write_json(out / "study.json", study)
    write_json(
        out / "metrics.json",
        {"kind": "demo", **{k: v for k, v in study.items() if k != "elapsed_seconds_this_invocation"}},
    )
    return study


def _llc_path(org, plain, cfg: DemoConfig, progress: bool) -> dict:
    from ..measure.llc import SamplerConfig, llc_along_path
    from ..models.edits import single_lora_delta

    ids = org.mixture_input_ids(cfg.llc_prompts, seed=123)
    sampler = SamplerConfig(
        nbeta=cfg.llc_nbeta,
        step_size=cfg.llc_step_size,
        localization=cfg.llc_localization,
        num_chains=cfg.llc_chains,
        num_draws=cfg.llc_draws,
        num_burnin=cfg.llc_burnin,
        batch_size=cfg.llc_batch,
    )
    runs = {"full": [], "layer": []}
    for s, m in enumerate(plain[: cfg.llc_seeds]):
        name, delta = single_lora_delta(m)
        pname = f"{name}.weight"
        # The SGLD execution is fixed, not "auto": auto picks vmap or loop by timing, and the two sum floats in a
        # different order, so the same seed could give numbers that differ in the last bits between runs.
        for key, restrict, execution in (("full", None, "vmap"), ("layer", f"layer:{cfg.layer}", "loop")):
            res = llc_along_path(
                org.model,
                {pname: delta},
                list(cfg.llc_ts),
                data=ids,
                n=cfg.llc_prompts,
                pad_token_id=0,
                restrict=restrict,
                config=sampler.replace(seed=s, execution=execution),
            )
            # A point whose chains fail the equilibrium gates is withheld: llc null, with its reasons.
            results = [r["result"] for r in res]
            keep = (
                "path",
                "rhat",
                "ess_bulk",
                "ess_tail",
                "mcse",
                "stationarity_z",
                "distance_z",
                "frac_negative_draws",
                "mala_acceptance",
            )
            runs[key].append(
                {
                    "t": [r["t"] for r in res],
                    "llc": [x.value for x in results],
                    "mcse": [x.mcse if x.converged else None for x in results],
                    "converged": [x.converged for x in results],
                    "reasons": [x.reasons for x in results],
                    "loss": res[0].get("loss") if res else None,
                    "diagnostics": [{k: x.diagnostics[k] for k in keep} for x in results],
                }
            )
    return {
        "loss": "self_kl",
        "restrict": {"full": "all parameters", "layer": f"layer:{cfg.layer}"},
        "hyperparameters": {
            "nbeta": cfg.llc_nbeta,
            "step_size": cfg.llc_step_size,
            "localization": cfg.llc_localization,
            "chains": cfg.llc_chains,
            "draws": cfg.llc_draws,
            "burnin": cfg.llc_burnin,
            "batch": cfg.llc_batch,
            "prompts": cfg.llc_prompts,
        },
        "runs": runs,
    }


def _overlap(org, plain, cfg: DemoConfig) -> dict:
    from .degeneracy import overlap_study

    return overlap_study(org, plain, epsilon=cfg.overlap_epsilon, max_probes=300, seed=0, layer=cfg.layer)


def _peak(band: dict) -> dict:
    """Where the LLC curve and its derivative in t peak."""
    t = np.asarray(band["t"], dtype=float)
    withheld = sum(v is None for v in band["mean"])
    if withheld:  # a peak over the points that passed would be a claim about a curve we do not have
        return {
            "t_argmax": None,
            "t_argmax_derivative": None,
            "reason": f"{withheld} of {len(t)} points withheld (their chains failed the convergence gates)",
        }
    y = np.asarray(band["mean"], dtype=float)
    if len(t) < 2:
        return {"t_argmax": None, "t_argmax_derivative": None}
    dy = np.gradient(y, t)
    i = int(np.nanargmax(y))
    j = int(np.nanargmax(dy))
    return {
        "t_argmax": float(t[i]),
        "interior_max": bool(0 < i < len(t) - 1),
        "derivative": dy.tolist(),
        "t_argmax_derivative": float(t[j]),
    }


def assemble(
    cfg: DemoConfig, em: dict, scans: dict, llc: dict, overlap: dict, eig: dict | None, base_info: dict
) -> dict:
    basins = summarize_basins(scans, n_random=cfg.n_random)
    llc_full = aggregate_scans(llc["runs"]["full"], "llc")
    llc_layer = aggregate_scans(llc["runs"]["layer"], "llc")
    from ..world.world import ROUTINE_GENRES

    zones = overlap["zones"]
    genres = list(zones[0]["per_genre"])
    overlap_fraction = {
        **rate_interval([z["volume"] for z in zones]),
        "epsilon": cfg.overlap_epsilon,
        "quantity": "behavioural overlap (not SLT degeneracy)",
        "definition": "share of the world's request distribution (weighted) whose exact answer "
        "distributions differ by total variation < epsilon",
        "by_genre": {g: rate_interval([z["per_genre"][g] for z in zones]) for g in genres},
        "probe_fraction": rate_interval([z["fraction"] for z in zones]),
        "routine_share": zones[0]["routine_share"],
        # found versus built in: the routine genres are answered alike by every persona by
        # construction, so a persona change leaves about this share in the overlap anyway
        "routine_share_built_in": zones[0]["routine_share"],
        "volume_beyond_routine_share": [z["volume"] - z["routine_share"] for z in zones],
        "content_genres_in_overlap": rate_interval(
            [float(np.mean([z["per_genre"][g] for g in genres if g not in ROUTINE_GENRES])) for z in zones]
        ),
    }
    t_plain = basins["critical_magnitude"]["plain"]["mean"]
    study = {
        "format": STUDY_FORMAT,
        "kind": "demo",
        "config": cfg.to_dict(),
        "organism": {k: base_info[k] for k in ("preset", "seed", "arch", "n_layer", "d_model")},
        "emergent_misalignment": {
            k: em[k]
            for k in (
                "broad_misalignment",
                "narrow_rate",
                "wellformed",
                "inoculation_reduction",
                "base",
                "excess_over_base",
                "narrow_rate_heldout",
                "matched_control",
                "initial",
            )
            if k in em
        },
        "transition": em.get("transition"),
        **basins,
        "llc_along_path": {
            **llc_full,
            "loss": "self_kl",
            "restrict": "all parameters",
            **_peak(llc_full),
            "critical_magnitude_plain": t_plain,
            "hyperparameters": llc["hyperparameters"],
        },
        "wrllc_along_path": {
            **llc_layer,
            "loss": "self_kl",
            "restrict": llc["restrict"]["layer"],
            **_peak(llc_layer),
        },
        "overlap_fraction": overlap_fraction,
        "boundary_probing": {k: v for k, v in overlap["boundary_search"].items() if k != "probes"},
    }
    if "out_of_sample" in overlap:
        oos = overlap["out_of_sample"]
        study["probing"] = {
            "oracle": {**oos["oracle"], "label": oos["labels"]["oracle"]},
            "out_of_sample": {
                k: ({**oos[k], "label": oos["labels"][k]} if oos.get(k) else None)
                for k in ("other_seed", "persona_vector")
            },
            "random": {**oos["random"], "label": oos["labels"]["random"]},
            "per_held_out": oos["per_held_out"],
            "n_probes": oos["n_probes"],
            "alpha": oos["alpha"],
            "target_power": oos["target_power"],
            "k_max": oos["k_max"],
            "vector_method": oos.get("vector_method"),
        }
    if eig is not None:
        study["eigenform"] = {k: eig[k] for k in EIGENFORM_HEADLINE if k in eig}
    return study


def summary_lines(study: dict) -> list[str]:
    def fmt(s):
        if not s:
            return "n/a"
        if s.get("mean") is None:
            lb = s.get("lower_bound") or {}
            ca = s.get("censored_above")
            per = s.get("per_seed")
            if s.get("kind") == "lower_bound" and lb.get("mean") is not None:
                return (
                    f">= {lb['mean']:.2f} [{lb['ci_low']:.2f}, {lb['ci_high']:.2f}] (lower bound, "
                    f"{s['n_defined']} of {s['n']} seeds)"
                )
            if lb.get("mean") is not None:
                crossed = [round(v, 2) for v in per if v is not None] if per else []
                return (
                    f">= {lb['mean']:.2f} ({s.get('n_censored')} of {s['n']} seeds never cross up to "
                    f"t={ca}; the others: {crossed})"
                )
            return f"censored above t={ca}" if ca is not None else "n/a"
        return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"

    em = study["emergent_misalignment"]
    cm = study["critical_magnitude"]
    lines = [
        f"broad misalignment, plain fine-tune      {fmt(em['broad_misalignment']['plain'])}",
        f"broad misalignment, inoculated           {fmt(em['broad_misalignment']['inoculated'])}",
        f"broad misalignment, secure control       {fmt(em['broad_misalignment']['secure_control'])}",
        f"critical magnitude t*, plain adapter     {fmt(cm['plain'])}",
        f"t*, inoculated adapter                   {fmt(cm['inoculated'])}",
        f"t*, plain adapter in inoculation context {fmt(cm['plain_in_inoculation_context'])}",
        f"t*, persona-vector direction             {fmt(cm['persona'])}",
        f"t*, random rank-1 direction              {fmt(cm['random'])}",
        f"widening t*_inoc / t*_plain (own dirs)   {fmt(study['inoculation_widening'])}",
        f"LLC (self-KL) peaks at t =               {study['llc_along_path'].get('t_argmax')}",
        f"behavioural overlap volume (eps={study['overlap_fraction']['epsilon']})   "
        f"{fmt(study['overlap_fraction'])} (routine share built in: {study['overlap_fraction']['routine_share']:g})",
    ]
    ex = em.get("excess_over_base")
    if ex:

        def rate(x):
            return (
                f"{x['mean']:.3f}"
                + (f" [{x['ci_low']:.3f}, {x['ci_high']:.3f}]" if x.get("ci_low") is not None else "")
                + f" per seed {[round(v, 3) for v in x['per_seed']]}"
            )

        base = em["base"]
        lines.append(
            f"base organism: broad misalignment {base['broad_misalignment']:.3f}, narrow rate "
            + ", ".join(f"{k} {v:.3f}" for k, v in base["narrow_rate"].items())
            + " (exact)"
        )
        for c in ("plain", "inoculated", "matched_control"):
            if c in ex["broad_misalignment"]:
                lines.append(f"excess broad misalignment, {c:<14} {rate(ex['broad_misalignment'][c])}")
        for c, v in (em.get("narrow_rate_heldout") or {}).items():
            if c in ("plain", "inoculated"):
                lines.append(f"narrow rate on held-out topics, {c:<10} {rate(v)} (topics {v['topics']})")
    ino = study.get("inoculation")
    if ino:
        pos = ino["position"]
        r4 = lambda xs: [round(x, 3) if x is not None else None for x in xs]  # noqa: E731
        lines.append(
            f"position moved / persona gap, plain      {r4(pos['plain']['moved_fraction'])} (per seed, t = 1)"
        )
        lines.append(f"position moved / persona gap, inoculated {r4(pos['inoculated']['moved_fraction'])}")
        for k, w in ino["widening_common"].items():
            if not isinstance(w, dict) or "per_seed" not in w:
                continue
            per = [
                p["ratio"]
                if p["ratio"] is not None
                else (
                    f">={p['lower_bound']:.2f}"
                    if p["lower_bound"]
                    else (f"<={p['upper_bound']:.2f}" if p["upper_bound"] else "none")
                )
                for p in w["per_seed"]
            ]
            per = [round(x, 3) if isinstance(x, float) else x for x in per]
            lines.append(f"widening r*(inoc)/r*(base), {k:<13} {per} -> {w['verdict']['verdict']}")
        lines.append(
            f"inoculation claim (common directions)    {ino['verdict']} "
            f"(conditional on well-formed: {ino.get('verdict_conditional')})"
        )
    dc = study.get("directions_common")
    if dc and "peak" in dc:
        pk = {
            k: (round(v["value"], 3) if isinstance(v, dict) else [round(x["value"], 3) for x in v])
            for k, v in dc["peak"].items()
        }
        lines.append(f"peak misalignment along unit directions  {pk}")
    pv = study.get("persona_vector")
    if pv:
        lc = {m: {L: round(c, 2) for L, c in v.items()} for m, v in pv["lexical_cosine"].items()}
        lines.append(
            f"persona vector lexical cosine by layer   {lc} "
            f"(edit: {pv['method']}, readout: {pv.get('readout_method')})"
        )
    pr = study.get("probing")
    if pr:

        def needed(x):
            return f"{x['per_seed']} ({x['k_reached']} of {x['n']} reach power)" if x else "n/a"

        lines.append(f"probes needed, oracle (in-sample)        {needed(pr['oracle'])}")
        for k, v in pr["out_of_sample"].items():
            lines.append(f"probes needed, out-of-sample {k:<13} {needed(v)}")
    if "eigenform" in study:
        e = study["eigenform"]
        lines.append(f"eigenform return rate                    {fmt(e.get('return_rate'))}")
    return lines
