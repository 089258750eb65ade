"""The basin study behind ``persona-basins demo``: organism -> EM +/- inoculation -> scans -> LLC along the
path -> overlap zone -> eigenform -> ``study.json`` + ``report.html``.

Each step goes through the run store (:func:`persona_basins.results.get_or_run`): ``RUN/steps/<name>/`` holds
its ``result.json`` and ``key.json`` (the settings and the organism's fingerprint). A rerun with the same
``--out`` and settings skips finished steps (and the EM step resumes unit by unit), so an interrupted run
resumes and gives the same numbers. A ``--out`` written with other settings is refused naming them
(``force`` recomputes).

After the organism, the steps' units (the fine-tunes, the parts of the basin scans, the LLC runs, the overlap
zone, the eigenform run) run on ``workers`` processes (:mod:`.demo_units`); the numbers do not depend on the
count.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import check, param
from ..errors import ConfigError, UserError
from ..measure.basin_verdicts import aggregate_scans, format_censored
from ..models.organism import PRESETS as ORGANISM_PRESETS
from ..results import (
    StudyResult,
    as_stored,
    check_out_dir,
    environment,
    get_or_run,
    is_finished,
    key_differences,
    prepare_out_dir,
    read_json,
    write_json,
)
from ..schema import validate_study
from ..stats import format_interval, rate_interval
from .basins import assemble_scans, scan_parts, summarize_basins
from .demo_units import (
    calibrated_llc_tasks,
    eigenform_task,
    em_tasks,
    llc_tasks,
    overlap_task,
    scan_tasks,
    unit_queue,
)
from .eigenform import HEADLINE as EIGENFORM_HEADLINE

STUDY_FORMAT = "persona-basins-study/1"
# code topics t % 3 == 2 are left out of every EM fine-tune, so the narrow rate is also read on unseen topics
EM_HELDOUT_EVERY = 3
# the basin scans' settings besides the grid and the random controls (basin_scans' defaults)
SCAN_LEVEL = 0.5
SCAN_SETTINGS = {"seed": 0, "level": SCAN_LEVEL, "vector_docs": 256}


@dataclass(frozen=True)
class DemoConfig:
    """The basin study's settings (``DEMO_PRESETS``; saved in the run's ``config.json``)."""

    preset: str = param("default", choices=tuple(ORGANISM_PRESETS), help="organism preset")
    organism_seed: int = param(0, ge=0, le=2**32 - 1, help="organism (world and training) seed")
    layer: int = param(0, ge=0, help="layer of the EM adapters")
    module: str = param("attn_out", help="module in the layer")
    seeds: int = param(5, ge=2, le=1000, help="fine-tuning seeds (confidence intervals need two)")
    em_steps: int = param(300, ge=1, le=10**7, help="fine-tuning steps of each EM adapter")
    ts: tuple[float, ...] = param(
        (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0), ge=0, help="scales t of the basin scans"
    )
    n_random: int = param(1, ge=0, help="random rank-1 controls per seed")
    # LLC along the path: self-KL loss; step size chosen where MALA acceptance stays >= 0.75 at t=0 on the
    # default organism (1e-4 gave 0.09-0.43); short chains, so R-hat is reported, not assumed.
    llc_ts: tuple[float, ...] = param((0.0, 0.5, 1.0, 1.5, 2.0), ge=0, help="scales t of the LLC estimates")
    llc_seeds: int = param(2, ge=1, help="EM seeds whose path gets LLC estimates")
    llc_chains: int = param(2, ge=1, help="SGLD chains per estimate")
    llc_draws: int = param(30, ge=1, help="draws per chain")
    llc_burnin: int = param(10, ge=0, help="burn-in steps per chain")
    llc_step_size: float = param(1e-5, gt=0, help="SGLD step size")
    llc_localization: float = param(100.0, ge=0, help="SGLD localization gamma")
    llc_nbeta: float = param(30.0, gt=0, help="SGLD inverse temperature n*beta")
    llc_prompts: int = param(32, ge=2, help="mixture documents in the LLC dataset")
    llc_batch: int = param(16, ge=1, help="SGLD minibatch size")
    # True: the path LLC at the organism preset's calibrated setting (measure.llc.calibration.llc_preset: its
    # restriction, n documents and sampler, one setting at every point), each llc_ts point one unit, and the
    # two ends of llc_ts again at 2γ (the γ-sensitivity); the llc_chains ... llc_batch fields are then unused
    llc_calibrated: bool = param(False, help="path LLC at the organism preset's calibrated setting")
    overlap_epsilon: float = param(0.05, gt=0, le=1, help="TV threshold of the overlap zone")
    eigenform: bool = param(True, help="run the eigenform step")
    extra: dict = param(default_factory=dict, help="free-form settings recorded with the run")

    def __post_init__(self):
        check(self)
        for name in ("ts", "llc_ts"):
            if not getattr(self, name):
                raise ConfigError("DemoConfig", name, "must hold at least one scale, got ()")

    def to_dict(self) -> dict:
        """The settings as recorded (config.json, the steps' keys); with ``llc_calibrated`` also the stored
        setting it names, so a run whose preset setting changed is not resumed with the old one. Without it
        the field is left out: the demo's own LLC setting is recorded (and resumed) as before the field."""
        d = asdict(self)
        d["ts"], d["llc_ts"] = list(self.ts), list(self.llc_ts)
        if not self.llc_calibrated:
            del d["llc_calibrated"]
        else:
            from ..measure.llc.calibration import llc_preset

            setting = llc_preset(self.preset)
            d["llc_setting"] = {**setting, "sampler": setting["sampler"].to_dict()}
        return d


DEMO_PRESETS = {
    "default": DemoConfig(),
    "tiny": DemoConfig(
        preset="tiny",
        seeds=2,
        em_steps=80,
        ts=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
        # one seed, 3 points at γ and the two ends at 2γ: 5 estimates of ~40-55 s on one core each (issue 23:
        # the tiny demo stays <= 3 min on 2 workers), chosen by cost before any verdict was seen
        llc_ts=(0.0, 1.0, 2.0),
        llc_seeds=1,
        llc_calibrated=True,
    ),
}


def step_key(settings: dict, fingerprint: str, name: str) -> dict:
    """What a step's result depends on: the demo settings and the organism's identity."""
    return {"format": STUDY_FORMAT, "step": name, "settings": settings, "organism": fingerprint}


def _step(run: Path, name: str, key: dict, fn, log, *, force: bool = False) -> dict:
    """Step ``name`` through the run store: ``RUN/steps/<name>/result.json``, reused when its key matches."""
    folder = run / "steps" / name
    recover = f"delete {folder} and rerun to recompute the {name} step"
    if is_finished(folder, key, force=force):
        result = read_json(folder / "result.json", recover=recover, expect=dict)
        log(f"[{name}] done earlier; reusing {folder / 'result.json'}")
        return result
    t0 = time.perf_counter()
    log(f"[{name}] running ...")
    get_or_run(folder, key, lambda tmp: write_json(tmp / "result.json", fn()), force=force)
    log(f"[{name}] finished in {time.perf_counter() - t0:.0f} s")
    return read_json(folder / "result.json", recover=recover, expect=dict)


def _check_settings(out: Path, want: dict, force: bool) -> None:
    """Refuse an ``--out`` holding another kind of run or a demo with other settings (``force`` replaces
    the settings it records); write ``config.json`` for a new run."""
    check_out_dir(out, "demo")
    prepare_out_dir(out)
    cfg_file = out / "config.json"
    if cfg_file.is_file() and not force:
        have = read_json(cfg_file, recover="delete the --out folder to start over", expect=dict)
        # the environment is recorded, not matched: a resume on another thread count is allowed (its last
        # digits may differ; docs/RELIABILITY.md says what "same seed, same numbers" covers)
        have = {k: v for k, v in have.items() if k != "environment"}
        settings = as_stored({k: v for k, v in want.items() if k != "environment"})
        if have != settings:
            raise UserError(
                f"--out {out} holds a demo run with other settings ({key_differences(have, settings)}); "
                f"--force recomputes it, or use another --out"
            )
        return
    write_json(cfg_file, want)  # a resumed run keeps the config (and environment) it started with


def run_demo(
    out: Path,
    cfg: DemoConfig,
    *,
    organism_dir: Path | None = None,
    progress: bool = True,
    log=print,
    force: bool = False,
    workers: int = 1,
) -> StudyResult:
    """Run (or resume) the demo into ``out``; ``force`` recomputes every step of a run with other settings.
    The result's metrics are the study (``study.json`` as written).

    ``workers``: processes the units after the organism run on (:mod:`.demo_units`; 1: this one). The numbers
    do not depend on it, so a run may resume with another count. More than 1 spawns workers: a script that
    calls this needs the usual ``if __name__ == "__main__":`` guard."""
    import torch

    from ..models.organism import is_organism, load_organism, organism_fingerprint, preset_config
    from .em import summary_table
    from .organism import build_organism

    out = Path(out)
    if organism_dir is not None and not is_organism(organism_dir):
        # checked before anything is written, so a typo never locks --out to the wrong settings
        raise UserError(
            f"--organism {organism_dir} is not an organism folder (persona-basins organism build)"
        )
    want = {
        "kind": "demo",
        "format": STUDY_FORMAT,
        **cfg.to_dict(),
        "organism": str(organism_dir) if organism_dir else None,
        # recorded, not matched (as the thread count): every worker count gives the same numbers
        "environment": {**environment(), "workers": workers},
    }
    _check_settings(out, want, force)
    settings = as_stored({k: v for k, v in want.items() if k != "environment"})
    t_start = time.perf_counter()

    # the workers start first: their imports overlap the organism's build or load
    with unit_queue(workers) as units:
        # 1. the organism
        org_dir = Path(organism_dir) if organism_dir else out / "organism"
        if organism_dir is None:
            build_organism(
                preset_config(cfg.preset, seed=cfg.organism_seed),
                org_dir,
                progress=progress,
                log=log,
                force=force,
            )
        org = load_organism(org_dir)
        fingerprint = organism_fingerprint(org)
        torch.manual_seed(0)

        def step(name: str, fn) -> dict:
            return _step(out, name, step_key(settings, fingerprint, name), fn, log, force=force)

        def finished(name: str) -> bool:
            return is_finished(out / "steps" / name, step_key(settings, fingerprint, name), force=force)

        org_path = str(org_dir.resolve())
        # 2. emergent misalignment +/- inoculation (resumable per unit)
        em_dir = out / "em"
        em = step("em", lambda: _em(units, org, org_path, em_dir, cfg, fingerprint, progress, force))
        write_json(em_dir / "metrics.json", {"kind": "em", **em})
        log(summary_table(em))
        scans, llc, overlap, eig = _after_em(units, step, finished, org_path, em_dir, cfg, progress)

    study = assemble(cfg, em, scans, llc, overlap, eig, base_info=org.config.to_dict())
    study["elapsed_seconds_this_invocation"] = time.perf_counter() - t_start
    validate_study(study)
    write_json(out / "study.json", study)
    write_json(out / "metrics.json", metrics_summary(study))
    return StudyResult(Path(out), study)


# the headline sections a demo's metrics.json repeats; every number is in study.json
SUMMARY_KEYS = ("config", "critical_magnitude", "inoculation_widening", "llc_along_path")


def metrics_summary(study: dict) -> dict:
    """The demo's ``metrics.json``: a few KB of headline numbers and a pointer to ``study.json`` (the
    schema-validated record of every number), not a second copy of it."""
    em = study["emergent_misalignment"]
    return {
        "kind": "demo",
        "format": study["format"],
        "study": "study.json",
        "broad_misalignment": em["broad_misalignment"],
        "inoculation_verdict": study["inoculation"]["verdict"],
        **{key: study[key] for key in SUMMARY_KEYS if key in study},
    }


def _plain_bands(scans: dict, n_seeds: int) -> list:
    """Each plain seed's boundary band: the crossing interval of its own t* scan (None: it never crosses)."""
    from ..measure.llc import crossing_interval

    curves = scans["inoculation"]["plain"][:n_seeds]
    return [crossing_interval(c["t"], c["broad_misalignment"], scans["level"]) for c in curves]


def _after_em(units, step, finished, org_path: str, em_dir: Path, cfg: DemoConfig, progress: bool):
    """Steps 3-6 (``step(name, fn)``: through the run store; ``finished(name)``: done earlier); returns
    their results."""
    plain = [str((em_dir / "adapters" / "plain" / f"seed{s}").resolve()) for s in range(cfg.seeds)]
    inoc = [str((em_dir / "adapters" / "inoculated" / f"seed{s}").resolve()) for s in range(cfg.seeds)]

    parts = scan_parts(len(plain), len(inoc))
    tasks = {
        # the calibrated path LLC's fixed points need only the adapters (its band points wait for the scans);
        # queued first, as its units are the longest (the scans' parts fill the other worker meanwhile)
        "llc": _calibrated_tasks(org_path, plain, cfg, _fixed_points(cfg)) if cfg.llc_calibrated else [],
        "scans": scan_tasks(
            org_path, plain, inoc, parts, cfg.ts, {**SCAN_SETTINGS, "n_random": cfg.n_random}
        ),
        "overlap": [overlap_task(org_path, plain, _overlap_settings(cfg))],
        "eigenform": [eigenform_task(org_path, plain[0])] if cfg.eigenform else [],
    }
    # Steps 3, 5 and 6 read only the adapters: on a pool their units are queued now, so the workers go on
    # with them while this process waits for each step in turn (the LLC's units wait for the scans, but for
    # the calibrated path's fixed points).
    queued = {}
    if units.backend.slots > 1:
        queued = {name: units.submit(t) for name, t in tasks.items() if t and not finished(name)}

    def gather(name: str, unit: str) -> list[dict]:
        ids = queued.pop(name, None) or units.submit(tasks[name])
        return units.gather(ids, name, unit=unit, progress=progress)

    # 3. basin scans: adapter / persona / random directions, and the inoculation comparison
    scans = step("scans", lambda: assemble_scans(parts, gather("scans", "parts"), cfg.ts, level=SCAN_LEVEL))

    # 4. LLC along the path (self-KL loss), full and restricted to the adapted layer
    def llc_path() -> dict:
        bands = _plain_bands(scans, cfg.llc_seeds)
        if cfg.llc_calibrated:
            return _calibrated_llc_path(units, org_path, plain, cfg, progress, bands, queued.pop("llc", None))
        return _llc_path(units, org_path, plain, cfg, progress, bands)

    llc = step("llc", llc_path)
    # 5. the overlap zone between the aligned organism and each EM model
    overlap = step("overlap", lambda: gather("overlap", "runs")[0])
    # 6. eigenform identity (fast setting)
    eig = step("eigenform", lambda: gather("eigenform", "runs")[0]) if cfg.eigenform else None
    return scans, llc, overlap, eig


def _em(units, org, org_path: str, em_dir: Path, cfg: DemoConfig, fingerprint: str, progress, force) -> dict:
    """The EM fine-tunes still to train on the pool, then their metrics (:func:`~.em.run_em`, which finds
    every unit trained)."""
    from ..models.adapters import resolve_module
    from ..train.finetune import CONDITIONS, FinetuneConfig
    from .em import TRACK_EVERY, plan_units, run_em

    resolve_module(org.model, cfg.module, cfg.layer)  # a bad module fails here, not in every worker
    units_of = dict(
        layer=cfg.layer,
        module=cfg.module,
        seeds=cfg.seeds,
        base=FinetuneConfig(steps=cfg.em_steps, heldout_every=EM_HELDOUT_EVERY),
        fingerprint=fingerprint,
    )
    plan = plan_units(org, em_dir, **units_of, conditions=CONDITIONS, track_every=TRACK_EVERY, force=force)
    todo = em_tasks(org_path, plan, track_every=TRACK_EVERY, force=force)
    units.gather(
        units.submit(todo),
        f"em layer {cfg.layer} {cfg.module}",
        unit="fine-tunes",
        done_before=len(plan) - len(todo),
        progress=progress,
    )
    return run_em(org, em_dir, **units_of, progress=False).metrics


def _overlap_settings(cfg: DemoConfig) -> dict:
    return dict(epsilon=cfg.overlap_epsilon, max_probes=300, seed=0, layer=cfg.layer)


def _sampler(cfg: DemoConfig):
    from ..measure.llc import SamplerConfig

    return SamplerConfig(
        nbeta=cfg.llc_nbeta,
        step_size=cfg.llc_step_size,
        localization=cfg.llc_localization,
        num_chains=cfg.llc_chains,
        num_draws=cfg.llc_draws,
        num_burnin=cfg.llc_burnin,
        batch_size=cfg.llc_batch,
    )


def _llc_path(units, org_path: str, plain: list[str], cfg: DemoConfig, progress: bool, bands: list) -> dict:
    """The LLC along each plain seed's path on ``llc_ts`` refined so every seed's band holds a point."""
    from ..measure.llc import refine_grid

    grid = refine_grid(cfg.llc_ts, bands)
    tasks = llc_tasks(
        org_path, plain[: cfg.llc_seeds], grid, _sampler(cfg), prompts=cfg.llc_prompts, layer=cfg.layer
    )
    results = units.gather(units.submit(tasks), "llc", unit="runs", progress=progress)
    runs = {"full": results[0::2], "layer": results[1::2]}  # llc_tasks: per seed, full then layer
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
        "bands": [list(b) if b is not None else None for b in bands],
    }


def _fixed_points(cfg: DemoConfig) -> list[tuple[float, float]]:
    """The calibrated path's points known before the scans, ``(t, γ)``: every ``llc_ts`` at the setting's γ,
    and the two ends of ``llc_ts`` (where the setting was calibrated) at 2γ, for the γ-sensitivity."""
    from ..measure.llc.calibration import llc_preset

    gamma = llc_preset(cfg.preset)["sampler"].localization
    ends = sorted({min(cfg.llc_ts), max(cfg.llc_ts)})
    return [(float(t), gamma) for t in cfg.llc_ts] + [(float(t), 2 * gamma) for t in ends]


def _calibrated_tasks(org_path: str, plain: list[str], cfg: DemoConfig, points: list) -> list[dict]:
    from ..measure.llc.calibration import llc_preset

    return calibrated_llc_tasks(org_path, plain[: cfg.llc_seeds], points, llc_preset(cfg.preset))


def _curve(results: list[dict]) -> dict:
    """One seed's curve from its one-point unit results, in order of t."""
    results = sorted(results, key=lambda r: r["t"][0])
    keys = ("t", "llc", "mcse", "converged", "reasons", "diagnostics")
    return {**{k: [x for r in results for x in r[k]] for k in keys}, "loss": results[0]["loss"]}


def _calibrated_llc_path(units, org_path, plain, cfg: DemoConfig, progress, bands, queued_ids) -> dict:
    """The LLC along each plain seed's path at the organism preset's calibrated setting (one setting at every
    point, :func:`~persona_basins.measure.llc.calibration.llc_preset`) on ``llc_ts`` refined so every seed's
    band holds a point, and at 2γ on the two ends of ``llc_ts``. ``queued_ids``: the fixed points' units, if
    queued already (:func:`_after_em`)."""
    from ..measure.llc import refine_grid
    from ..measure.llc.calibration import llc_preset

    setting = llc_preset(cfg.preset)
    sampler, gamma = setting["sampler"], setting["sampler"].localization
    fixed = _fixed_points(cfg)
    extra = [(t, gamma) for t in refine_grid(cfg.llc_ts, bands) if t not in cfg.llc_ts]
    ids = queued_ids or units.submit(_calibrated_tasks(org_path, plain, cfg, fixed))
    ids = ids + units.submit(_calibrated_tasks(org_path, plain, cfg, extra))
    results = units.gather(ids, "llc", unit="points", progress=progress)
    seeds = range(min(cfg.llc_seeds, len(plain)))
    keys = [(s, g) for s in seeds for _, g in fixed] + [(s, g) for s in seeds for _, g in extra]
    by_key: dict[tuple, list] = {}
    for key, result in zip(keys, results):
        by_key.setdefault(key, []).append(result)
    return {
        "loss": "self_kl",
        "restrict": {"path": setting["restrict"]},
        "setting": {
            "organism_preset": cfg.preset,
            "restrict": setting["restrict"],
            "n_docs": setting["n_docs"],
            "source": setting["source"],
        },
        # the preset's sampler as stored (each seed's chains are seeded by the seed's index), n and nβ used
        "hyperparameters": {
            **sampler.to_dict(),
            "n_docs": setting["n_docs"],
            "nbeta_used": sampler.resolved_nbeta(setting["n_docs"]),
        },
        "runs": {
            "path": [_curve(by_key[(s, gamma)]) for s in seeds],
            "double_gamma": [_curve(by_key[(s, 2 * gamma)]) for s in seeds],
        },
        "double_gamma": 2 * gamma,
        "bands": [list(b) if b is not None else None for b in bands],
    }


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


def _peak_verdict(runs: list[dict], bands: list) -> dict:
    """Does λ̂ peak inside each seed's own t* band?
    (:func:`~persona_basins.measure.llc.peak_at_boundary_verdict`)"""
    from ..measure.llc import peak_at_boundary_verdict

    return peak_at_boundary_verdict(runs[0]["t"], [r["llc"] for r in runs], [r["mcse"] for r in runs], bands)


def _overlap_by_outcome(volumes: list[float], em: dict) -> dict:
    """The overlap volume over the broad and over the narrow plain fine-tunes (the EM rule: excess broad
    misalignment over the base model >= its threshold), each seed's outcome beside it."""
    from ..stats import means_by_outcome

    excess = em["excess_over_base"]["broad_misalignment"]["plain"]
    broad = [v is not None and v >= excess["threshold"] for v in excess["per_seed"][: len(volumes)]]
    return {
        **means_by_outcome(volumes, broad),
        "broad_per_seed": broad,
        "rule": f"plain excess broad misalignment over the base >= {excess['threshold']:g}",
    }


def _llc_sections(llc: dict, scans: dict, t_plain) -> dict:
    """``llc_along_path`` and, at the demo's own setting, ``wrllc_along_path``: the LLC step's curves with
    their peaks and verdicts. The calibrated setting has one restriction, so one section, with every point's
    gates and the γ-sensitivity."""
    runs = llc["runs"]
    calibrated = "path" in runs
    bands = llc.get("bands") or _plain_bands(scans, len(runs["path" if calibrated else "full"]))

    def section(curves: list[dict], restrict: str) -> dict:
        band = aggregate_scans(curves, "llc")
        return {
            **band,
            "loss": "self_kl",
            "restrict": restrict,
            **_peak(band),
            "peak_verdict": _peak_verdict(curves, bands),
        }

    if not calibrated:
        return {
            "llc_along_path": {
                **section(runs["full"], "all parameters"),
                "critical_magnitude_plain": t_plain,
                "hyperparameters": llc["hyperparameters"],
            },
            "wrllc_along_path": section(runs["layer"], llc["restrict"]["layer"]),
        }
    return {
        "llc_along_path": {
            **section(runs["path"], llc["restrict"]["path"]),
            "critical_magnitude_plain": t_plain,
            "hyperparameters": llc["hyperparameters"],
            "setting": llc["setting"],
            "gates": [_gates(curve) for curve in runs["path"]],
            "gamma_sensitivity": _gamma_sensitivity(llc),
        }
    }


def _gates(curve: dict) -> list[dict]:
    """Each point's gate outcome and diagnostics (none of them states a withheld value)."""
    return [
        {"t": t, "converged": ok, "reasons": why, **diag}
        for t, ok, why, diag in zip(curve["t"], curve["converged"], curve["reasons"], curve["diagnostics"])
    ]


def _gamma_sensitivity(llc: dict) -> dict:
    """Per seed, λ̂ at γ and at 2γ on the ends of the path (:func:`~persona_basins.measure.llc.calibration.
    localization_sensitivity`; withheld points are None and do not count)."""
    from ..measure.llc.calibration import SENSITIVITY_RULE, localization_sensitivity

    per_seed = []
    for path, double in zip(llc["runs"]["path"], llc["runs"]["double_gamma"]):
        at = dict(zip(path["t"], path["llc"]))
        at_gamma = [at[t] for t in double["t"]]
        verdict = localization_sensitivity(at_gamma, double["llc"])
        verdict.pop("rule")
        per_seed.append(
            {
                "t": double["t"],
                "llc_at_gamma": at_gamma,
                "llc_at_double_gamma": double["llc"],
                "mcse_at_double_gamma": double["mcse"],
                "gates_at_double_gamma": _gates(double),
                **verdict,
            }
        )
    gamma = llc["hyperparameters"]["localization"]
    return {
        "localization": gamma,
        "double": llc["double_gamma"],
        "per_seed": per_seed,
        "rule": SENSITIVITY_RULE,
    }


def assemble(
    cfg: DemoConfig, em: dict, scans: dict, llc: dict, overlap: dict, eig: dict | None, base_info: dict
) -> dict:
    basins = summarize_basins(scans, n_random=cfg.n_random)
    from ..world.world import ROUTINE_GENRES
    from .em import plain_em_verdict

    zones = overlap["zones"]
    genres = list(zones[0]["per_genre"])
    overlap_fraction = {
        **rate_interval([z["volume"] for z in zones]).to_dict(),
        "epsilon": cfg.overlap_epsilon,
        "quantity": "behavioural overlap (not SLT degeneracy)",
        "definition": "share of the world's request distribution (weighted) whose exact answer "
        "distributions differ by total variation < epsilon",
        "by_genre": {g: rate_interval([z["per_genre"][g] for z in zones]).to_dict() for g in genres},
        "probe_fraction": rate_interval([z["fraction"] for z in zones]).to_dict(),
        "routine_share": zones[0]["routine_share"],
        # found versus built in: the routine genres are answered alike by every persona by
        # construction, so a persona change leaves about this share in the overlap anyway
        "routine_share_built_in": zones[0]["routine_share"],
        "volume_beyond_routine_share": [z["volume"] - z["routine_share"] for z in zones],
        "content_genres_in_overlap": rate_interval(
            [float(np.mean([z["per_genre"][g] for g in genres if g not in ROUTINE_GENRES])) for z in zones]
        ).to_dict(),
        # broad and narrow fine-tunes overlap the aligned model very differently: one mean describes neither
        "by_outcome": _overlap_by_outcome([z["volume"] for z in zones], em),
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
        }
        | {"em_verdict": plain_em_verdict(em)},  # the em step's verdict (computed for one stored before it)
        "transition": em.get("transition"),
        **basins,
        **_llc_sections(llc, scans, t_plain),
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


def _share_text(split: dict) -> str:
    """``[28%, 99%]; mean broad 0.90, narrow 0.00``: an outcome_summary's exact share and conditional
    means."""
    share = split["share_above"]
    means = [
        f"{name} {format_interval(split[key], '.2f')}"
        for name, key in (("broad", "mean_above"), ("narrow", "mean_below"))
        if split.get(key)
    ]
    return f"[{100 * share['ci_low']:.0f}%, {100 * share['ci_high']:.0f}%]; mean " + ", ".join(means)


def _verdict_text(section: dict) -> str:
    v = section.get("peak_verdict")
    if not v:
        return "n/a"
    return f"{v['verdict']} ({v['supports']} support, {v['seeds_never_crossing']} never cross)"


def _calibrated_lines(section: dict) -> list[str]:
    """The calibrated path LLC's gates and γ-sensitivity (nothing for the demo's own setting)."""
    if "gates" not in section:
        return []
    hp = section["hyperparameters"]
    points = [p for seed in section["gates"] for p in seed]
    sens = section["gamma_sensitivity"]
    dominated = [s["localization_dominated"] for s in sens["per_seed"]]
    levels = [
        f"{s['level_change']:+.0%}" if s["level_change"] is not None else "n/a" for s in sens["per_seed"]
    ]
    return [
        f"LLC points passing the gates             {sum(p['converged'] for p in points)} of {len(points)} "
        f"({section['restrict']}; {hp['precondition'] or 'plain'} SGLD, step {hp['step_size']:.3g}, "
        f"γ {hp['localization']:g}, n {hp['n_docs']}, {hp['num_chains']} x ({hp['num_burnin']} + "
        f"{hp['num_draws']}))",
        f"LLC γ -> 2γ at the path's ends           level {', '.join(levels)} per seed; "
        f"localisation-dominated: {dominated}",
    ]


def summary_lines(study: dict) -> list[str]:
    fmt = format_censored

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
        f"LLC peak inside each seed's t* band      {_verdict_text(study['llc_along_path'])}",
        *_calibrated_lines(study["llc_along_path"]),
        f"behavioural overlap volume (eps={study['overlap_fraction']['epsilon']})   "
        f"{fmt(study['overlap_fraction'])} "
        f"(routine share built in: {study['overlap_fraction']['routine_share']:g})",
    ]
    verdict = em.get("em_verdict")
    if verdict:
        lines.append(f"EM verdict, plain fine-tunes             {verdict['verdict']}: {verdict['reason']}")
    split = study["overlap_fraction"].get("by_outcome")
    if split:
        lines.append(
            f"overlap volume, broad / narrow fine-tunes {format_interval(split['broad'])} / "
            f"{format_interval(split['narrow'])} ({split['k_broad']} of {split['n']} seeds broad)"
        )
    ex = em.get("excess_over_base")
    if ex:

        def rate(x):
            split = x.get("by_outcome")
            broad = (
                f"; broad {split['k_above']} of {split['n']} {_share_text(split)}"
                if split and split["k_above"] and split["k_above"] < split["n"]
                else ""
            )
            return f"{format_interval(x)} per seed {[round(v, 3) for v in x['per_seed']]}{broad}"

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
        check = ino["widening_common"].get("readout_validation")
        if check:
            lines.append(f"position readout, broad vs narrow plain  {check['reason']}")
        cos = ino["widening_common"].get("cosine_inoculated_plain")
        if cos:
            lines.append(f"cos(dW inoculated, dW plain), same seed  {r4(cos)}")
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
