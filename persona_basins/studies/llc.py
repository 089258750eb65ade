"""LLC studies: one estimate, a calibration grid, developmental stages over pretraining checkpoints, the LLC
over an em fine-tune's adapter checkpoints and along the basin path, each written to a run folder.

Every ``run_*`` returns a :class:`~persona_basins.results.StudyResult`; the command draws its figures with
``persona_basins.viz.llc_figures`` from ``metrics`` and ``figure_data`` into ``run_dir / "figures"`` under the
names the metrics list (``metrics["figures"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArgumentError, UserError
from ..measure.llc import SamplerConfig, calibrate, estimate_llc
from ..progress import track
from ..results import RunDir, StudyResult
from .em import em_run_adapters, em_run_organism  # the one reader of an em run


@dataclass
class LLCTarget:
    """What an LLC is measured on: the model (at ``w*``), its loss, the data (input ids) and what moves."""

    model: Any
    loss_fn: Any
    input_ids: Any
    restrict: Any
    source: str


def _read_text_ids(path: str | Path, tokenizer, n_docs: int, seq_len: int):
    import torch

    p = Path(path)
    if not p.is_file():
        raise ArgumentError("data", f"file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise ArgumentError("data", f"{p} has no non-empty lines")
    lines = lines[:n_docs]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:seq_len] for t in lines]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ArgumentError("data", f"{p}: every line tokenises to fewer than 2 tokens")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, pad


def load_target(
    model_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    restrict=None,
    data_file: str | Path | None = None,
    n_docs: int = 256,
    seq_len: int = 64,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "fp32",
) -> LLCTarget:
    """An organism folder (data: documents of its pretraining mixture, unless ``data_file``) or any Hugging
    Face causal LM folder (``data_file`` required: one document per line), optionally with a PEFT adapter
    (then only the adapter moves unless ``restrict`` says otherwise). ``dtype`` defaults to fp32, also on a
    GPU: SGLD steps of 1e-5 relative size vanish in bf16's 8-bit mantissa, so a lower precision is opt-in."""
    from ..measure.llc import causal_lm_loss_fn
    from ..models.organism import is_organism

    if n_docs < 1 or seq_len < 2:
        raise UserError(f"n_docs must be >= 1 and seq_len >= 2, got {n_docs}, {seq_len}")
    path = Path(model_dir)
    if is_organism(path):
        from ..models.lm import lm_loss
        from ..models.organism import load_organism

        org = load_organism(path)
        model, loss_fn = org.model, lm_loss
        if data_file:
            ids, pad = _read_text_ids(data_file, org.tokenizer, n_docs, seq_len)
            loss_fn = causal_lm_loss_fn(pad)
            source = f"text file {data_file}"
        else:
            ids = org.mixture_input_ids(n_docs, seed)
            source = "organism mixture"
    else:
        from ..models.hf import load_causal_lm, looks_local

        if looks_local(str(model_dir)) and not path.is_dir():  # else a hub id, as `em --model` takes
            raise ArgumentError("model", f"folder not found: {path}")
        if not data_file:
            raise ArgumentError("data", f"(a text file) is required: {model_dir} is not an organism folder")
        model, tok = load_causal_lm(str(model_dir), device="cpu", dtype="fp32")
        ids, pad = _read_text_ids(data_file, tok, n_docs, seq_len)
        loss_fn = causal_lm_loss_fn(pad)
        source = f"text file {data_file}"
    if adapter:
        from ..models.edits import load_adapter

        model = load_adapter(model, adapter).eval()
        restrict = restrict or "adapter"
    if device is not None or dtype != "fp32":
        from ..models.hf import resolve_device, resolve_dtype

        dev = resolve_device(device or "cpu")
        model = model.to(device=dev, dtype=resolve_dtype("fp32" if dtype == "auto" else dtype, dev))
    return LLCTarget(model, loss_fn, ids, restrict, source)


# Diagnostics from which a withheld mean would follow (quarter means of the λ trace): left out when withheld.
_MEAN_REVEALING_DIAGNOSTICS = ("llc_per_draw_mean_trace_first_last_quarter",)


def _summary(res) -> dict:
    """The estimate with its MCSE-based 95% interval (valid with shared minibatches: see
    ``diagnostics.convergence``), or, when the equilibrium gates failed, null + reasons and no number from
    which the withheld mean follows (no per-chain values, no spread over chains); the diagnostics stay."""
    withheld = not res.converged
    lo, hi = res.interval if res.interval is not None and not withheld else (None, None)
    diagnostics = res.diagnostics
    if withheld:
        diagnostics = {k: v for k, v in diagnostics.items() if k not in _MEAN_REVEALING_DIAGNOSTICS}
    return {
        "llc": {
            "mean": res.value,
            "mcse": res.mcse,
            "lo": lo,
            "hi": hi,
            "interval": "mean ± 1.96 MCSE (from ESS), floored at 0",
            "converged": res.converged,
            "reasons": res.reasons,
            "std_over_chains": None if withheld else res.std,
        },
        "per_chain": None if withheld else res.per_chain,
        "diagnostics": diagnostics,
    }


class CalibrationFailed(UserError):
    """``--calibrate`` found no setting: the message names what to try; ``result`` is the saved grid (a
    :class:`StudyResult` whose figures the command draws before it reports the error)."""

    def __init__(self, message: str, result: StudyResult):
        super().__init__(message)
        self.result = result


TRACE_FIGURE = "llc_trace.png"
CALIBRATION_FIGURE = "calibration_traces.png"
CALIBRATION_GRID_FIGURE = "calibration_grid.png"
STAGE_FIGURES = {"stages": "llc_stages.png", "layers": "llc_layers.png", "heads": "llc_heads.png"}


def run_estimate(
    target: LLCTarget,
    out: str | Path,
    *,
    config: SamplerConfig,
    n: int | None = None,
    run_config: dict | None = None,
    progress: bool = False,
    calibrate_steps=None,
) -> StudyResult:
    """One LLC estimate written to ``out`` (config.json, metrics.json). With ``calibrate_steps`` (a list of
    step sizes) the step size x localisation grid is calibrated first (short chains, see
    :func:`~persona_basins.measure.llc.calibrate`) and the estimate uses the recommended setting, drawn at
    least as long as the calibration says the full gates need; with no recommendation the grid is written to
    ``out`` and :class:`CalibrationFailed` (a one-line error naming the next settings to try) is raised.
    ``figure_data["traces"]``: the panels of the trace figure (:data:`TRACE_FIGURE`), label -> chains x
    draws."""
    n = n or len(target.input_ids)
    calibration = None
    if calibrate_steps:
        cal = calibrate(
            target.model,
            target.loss_fn,
            target.input_ids,
            n=n,
            step_sizes=calibrate_steps,
            config=config.replace(num_draws=200, num_burnin=50),
            restrict=target.restrict,
        )
        traces = cal.pop("traces")
        if cal["config"] is None:  # the grid and its figures are kept, and the error says what to try next
            run = RunDir(out, "llc_calibrate", {**(run_config or {}), "sampler": config.to_dict()})
            figures = [f"figures/{CALIBRATION_GRID_FIGURE}", f"figures/{CALIBRATION_FIGURE}"]
            run.write_metrics({**cal, "figures": figures})
            raise CalibrationFailed(
                f"--calibrate: no setting passed the calibration gates ({len(cal['grid'])} tried; grid in "
                f"{run.path / 'metrics.json'}); try next: " + " | ".join(cal["next_settings"]),
                StudyResult(run.path, {**cal, "figures": figures}, {"traces": traces}),
            )
        calibration = cal
        config = config.replace(
            step_size=cal["config"]["step_size"],
            nbeta=cal["config"]["nbeta"],
            localization=cal["config"]["localization"],
            precondition=cal["config"]["precondition"],
            num_draws=max(config.num_draws, cal["draws_for_gates"]),
        )
    # config.json records the n_beta used (n / log n when none was given), not null; the same value either way
    config = config.replace(nbeta=config.resolved_nbeta(n))
    run = RunDir(
        out,
        "llc",
        {
            **(run_config or {}),
            **({"nbeta": config.nbeta} if run_config and "nbeta" in run_config else {}),
            "sampler": config.to_dict(),
            "data_source": target.source,
            "restrict_used": target.restrict,
        },
    )
    res = estimate_llc(
        target.model,
        target.loss_fn,
        target.input_ids,
        n=n,
        config=config,
        restrict=target.restrict,
        progress=progress,
    )
    # a withheld estimate's traces stay out of metrics.json (their mean is the withheld number); the trace
    # figure still shows them
    withheld = not res.converged
    metrics = {
        **_summary(res),
        "loss": res.diagnostics["loss"],
        "data_source": target.source,
        "loss_trace": None if withheld else res.loss_trace,
        "llc_trace": None if withheld else res.llc_trace,
        "figures": [f"figures/{TRACE_FIGURE}"],
        "calibration": calibration,
    }
    run.write_metrics(metrics)
    traces = {"loss (minibatch) per draw": res.loss_trace, "λ per draw = nβ(L_B(w) − L_B(w*))": res.llc_trace}
    return StudyResult(run.path, metrics, {"traces": traces})


def run_calibrate(
    target: LLCTarget,
    out: str | Path,
    *,
    config: SamplerConfig,
    step_sizes,
    nbetas=None,
    localizations=None,
    n: int | None = None,
    run_config: dict | None = None,
    progress: bool = False,
) -> StudyResult:
    """A step size x n_beta x localisation grid (:func:`~persona_basins.measure.llc.calibrate`) written to
    ``out`` with the recommended setting (``metrics["config"]``, a SamplerConfig dict, or null).
    ``figure_data["traces"]``: ``{(nbeta, step_size, localization): chains x draws}`` for
    :data:`CALIBRATION_FIGURE`; the grid figure is drawn from ``metrics["grid"]``."""
    n = n or len(target.input_ids)
    run = RunDir(
        out,
        "llc_calibrate",
        {
            **(run_config or {}),
            "sampler": config.to_dict(),
            "data_source": target.source,
            "restrict_used": target.restrict,
        },
    )
    cal = calibrate(
        target.model,
        target.loss_fn,
        target.input_ids,
        n=n,
        step_sizes=step_sizes,
        nbetas=nbetas,
        localizations=localizations,
        config=config,
        restrict=target.restrict,
        progress=progress,
    )
    traces = cal.pop("traces")
    if cal["recommended"] is not None:
        cal["recommended"]["recommended"] = True
    metrics = {**cal, "figures": [f"figures/{CALIBRATION_GRID_FIGURE}", f"figures/{CALIBRATION_FIGURE}"]}
    run.write_metrics(metrics)
    return StudyResult(run.path, metrics, {"traces": traces})


def _critical_points_of_converged(steps, values, smooth: float, mcse=None) -> dict:
    """Stage boundaries (:func:`~persona_basins.measure.llc.stages.stage_boundaries`, each tested against the
    estimates' MCSE) over the checkpoints whose estimate passed the gates; ``smoothed`` is null elsewhere.
    ``smooth``: the Gaussian kernel's width in median checkpoint spacings (over step values)."""
    from ..measure.llc.stages import stage_boundaries

    keep = [i for i, v in enumerate(values) if v is not None]
    smoothed = [None] * len(values)
    if len(keep) < 3:
        return {
            "smoothed": smoothed,
            "boundaries": [],
            "kinds": [],
            "candidates": [],
            "note": f"{len(keep)} of {len(values)} checkpoints converged: too few for stage boundaries",
        }
    kept_steps = [steps[i] for i in keep]
    bandwidth = smooth * float(np.median(np.diff(kept_steps)))
    cp = stage_boundaries(
        kept_steps,
        [values[i] for i in keep],
        None if mcse is None else [mcse[i] for i in keep],
        bandwidth=bandwidth,
    )
    for j, i in enumerate(keep):
        smoothed[i] = cp["smoothed"][j]
    return {**cp, "smoothed": smoothed}


def run_stages(
    organism_dir: str | Path,
    out: str | Path,
    *,
    config: SamplerConfig,
    n_docs: int = 256,
    n: int | None = None,
    max_checkpoints: int | None = None,
    smooth: float = 1.0,
    layers: bool = True,
    heads: bool = True,
    run_config: dict | None = None,
    device: str = "cpu",
) -> StudyResult:
    """The LLC (self-KL to each checkpoint) over an organism's pretraining checkpoints; stage boundaries where
    the Gaussian-smoothed curve's slope changes sign beyond its MCSE-based standard error; per-layer and
    per-head weight-restricted curves. ``figure_data``: the arguments of
    :func:`persona_basins.viz.llc_figures.plot_stages` (steps, curves, stds, critical, n_layers, n_heads)."""
    from ..measure.llc import self_kl_loss_fn
    from ..models.hf import load_causal_lm
    from ..models.organism import list_checkpoints, load_organism

    org = load_organism(organism_dir)
    cks = list_checkpoints(organism_dir)
    if not cks:
        raise UserError(f"no pretraining checkpoints in {Path(organism_dir) / 'checkpoints'}")
    if max_checkpoints is not None:
        if max_checkpoints < 1:
            raise ArgumentError("max_checkpoints", f"must be >= 1, got {max_checkpoints}")
        if len(cks) > max_checkpoints:
            keep = np.unique(np.linspace(0, len(cks) - 1, max_checkpoints).round().astype(int))
            cks = [cks[i] for i in keep]
    ids = org.mixture_input_ids(n_docs, config.seed)
    n = n or len(ids)
    run = RunDir(out, "llc_stages", {**(run_config or {}), "sampler": config.to_dict()})
    cfg = org.model.config
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    comps = [("full", None)]
    if layers:
        comps += [(f"layer:{i}", f"layer:{i}") for i in range(n_layers)]
    if heads:
        comps += [
            (f"layer:{i}/head:{h}", f"layer:{i}/head:{h}") for i in range(n_layers) for h in range(n_heads)
        ]
    curves = {name: [] for name, _ in comps}
    stds = {name: [] for name, _ in comps}
    withheld = {name: [] for name, _ in comps}
    diags = []
    for step, folder in track(cks, "llc stages: checkpoints", unit="checkpoints"):
        model, _ = load_causal_lm(folder, device=device, dtype="fp32", tokenizer=False)
        for name, restrict in comps:
            # the self-KL to this checkpoint: 0 and minimal there, where the training loss of a checkpoint
            # mid-training is not at a minimum (SGLD on it drifts downhill)
            loss_fn, data = self_kl_loss_fn(model, ids, pad_token_id=0)
            res = estimate_llc(model, loss_fn, data, n=n, config=config, restrict=restrict)
            curves[name].append(res.value)  # None (withheld) when the equilibrium gates failed
            stds[name].append(res.mcse if res.converged else None)
            withheld[name].append(None if res.converged else "; ".join(res.reasons))
            if name == "full":
                d = res.diagnostics
                diags.append(
                    {
                        "step": step,
                        "mala_acceptance": d["mala_acceptance"],
                        "rhat": d["rhat"],
                        "ess_bulk": d["ess_bulk"],
                        "mcse": d["mcse"],
                        "converged": res.converged,
                        "reasons": res.reasons,
                        "path": d["path"],
                        "frac_negative_draws": d["frac_negative_draws"],
                        "init_loss": d["init_loss"],
                        "warnings": d["warnings"],
                    }
                )
    steps = [s for s, _ in cks]
    cp = _critical_points_of_converged(steps, curves["full"], smooth, stds["full"])
    figures = [f"figures/{STAGE_FIGURES['stages']}"]
    if layers:
        figures.append(f"figures/{STAGE_FIGURES['layers']}")
    if heads:
        figures.append(f"figures/{STAGE_FIGURES['heads']}")
    metrics = {
        "steps": steps,
        "llc": curves["full"],
        "llc_std": stds["full"],
        "smoothed": cp["smoothed"],
        "stage_boundaries": cp["boundaries"],
        "boundary_kinds": cp["kinds"],
        "per_layer": {k: v for k, v in curves.items() if k.startswith("layer:") and "/head:" not in k},
        "per_head": {k: v for k, v in curves.items() if "/head:" in k},
        "per_layer_boundaries": {
            k: _critical_points_of_converged(steps, v, smooth, stds[k])["boundaries"]
            for k, v in curves.items()
            if k != "full" and "/head:" not in k
        },
        "llc_mcse": stds["full"],
        "withheld": withheld,
        "boundaries_from": "converged checkpoints only (withheld ones are null); a boundary needs a slope "
        "change beyond its MCSE-based standard error (stage_candidates lists the untested and failed ones)",
        "diagnostics": diags,
        "figures": figures,
        "loss": "self_kl",
        "loss_note": "self-KL to each checkpoint (0 and minimal there); a mid-training checkpoint is not a "
        "minimum of the training loss",
        "stage_candidates": cp.get("candidates", []),
        "boundary_test": cp.get("test"),
    }
    run.write_metrics(metrics)
    figure_data = {
        "steps": steps,
        "curves": curves,
        "stds": stds,
        "critical": cp,
        "n_layers": n_layers,
        "n_heads": n_heads,
    }
    return StudyResult(run.path, metrics, figure_data)


# ------------------------------------------------------------------------------------------------------------
# The LLC over an emergent-misalignment fine-tune (saved adapter checkpoints)

TRAJECTORY_FIGURE = "llc_trajectory.png"


def _em_checkpoints(unit_dir: Path) -> list[tuple[int, Path]]:
    """``[(step, adapter folder)]``: ``checkpoints/step_NNNNNN`` and the final adapter (its step from
    result.json)."""
    out = []
    for d in sorted((unit_dir / "checkpoints").glob("step_*")):
        try:
            out.append((int(d.name.split("_", 1)[1]), d))
        except ValueError:
            continue
    res = unit_dir / "result.json"
    if (unit_dir / "adapter_config.json").is_file() and res.is_file():
        from ..results import read_json

        final = int(read_json(res).get("config", {}).get("steps", 0))
        if not out or final > out[-1][0]:
            out.append((final, unit_dir))
    return out


JUMP_DEFINITION = (
    "the step where the curve first crosses half-way between its start (step 0) and end levels, linearly "
    "interpolated between checkpoints; both curves read at the same checkpoints"
)
ORDERS = ("before", "with", "after", "undecided")


def _jump_order(steps, row: dict, behaviour) -> dict:
    """:func:`~persona_basins.measure.llc.jump_order_verdict` of one LLC curve against the behaviour, or
    undecided when the checkpoints do not start at step 0."""
    from ..measure.llc import jump_order_verdict

    if steps[0] != 0:
        return {"order": "undecided", "why": f"no step-0 checkpoint (the first is step {steps[0]})"}
    if len(steps) < 2:
        return {"order": "undecided", "why": "one checkpoint"}
    return jump_order_verdict(steps, row["llc"], row["mcse"], behaviour)


def run_trajectory(
    em_run: str | Path,
    out: str | Path,
    *,
    config: SamplerConfig,
    organism: str | Path | None = None,
    conditions=("plain", "inoculated"),
    seeds: int | None = None,
    n_docs: int = 32,
    run_config: dict | None = None,
    device: str = "cpu",
) -> StudyResult:
    """The adapter-restricted and layer-restricted LLC (self-KL at each checkpoint, so each checkpoint is a
    minimum of its own loss) at every saved adapter checkpoint of an ``em`` run, beside the behavioural curve
    (broad misalignment), ‖B‖ and the local cosine of the B trajectory from the run's ``result.json``.

    Broad misalignment is read at the same checkpoints (step 0 included: ``finetune`` saves it). Per seed
    it reports which rises first, each curve's jump defined one way (:data:`JUMP_DEFINITION`): "before" /
    "with" (the same checkpoint interval) / "after" / "undecided", by
    :func:`~persona_basins.measure.llc.jump_order_verdict`. The figure is drawn from the metrics.
    """
    from ..measure.llc import self_kl_loss_fn
    from ..measure.persona import em_readout
    from ..models.edits import adapter_on_copy
    from ..models.organism import load_organism
    from ..results import read_json

    em_run = Path(em_run)
    if not (em_run / "adapters").is_dir():
        raise ArgumentError("em_run", f"{em_run}: not an em run folder (no adapters/)")
    org = load_organism(em_run_organism(em_run, organism))
    if device != "cpu":
        from ..models.hf import resolve_device

        org.model.to(resolve_device(device))
    ids = org.mixture_input_ids(n_docs, seed=123)
    run = RunDir(
        out,
        "llc_trajectory",
        {
            **(run_config or {}),
            "em_run": str(em_run.resolve()),
            "organism": str(organism),
            "sampler": config.to_dict(),
        },
    )
    units = {}
    for cond in conditions:
        cdir = em_run / "adapters" / cond
        if not cdir.is_dir():
            raise ArgumentError("em_run", f"{em_run}: no adapters for condition {cond!r}")
        seed_dirs = sorted(
            cdir.glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 1 << 30
        )
        if seeds is not None:
            seed_dirs = seed_dirs[:seeds]
        for sd in seed_dirs:
            cks = _em_checkpoints(sd)
            if not cks:
                raise ArgumentError(
                    "em_run",
                    f"{em_run}: {cond}/{sd.name} has no saved adapter checkpoints "
                    "(the em run was trained without checkpoint_every)",
                )
            result = read_json(sd / "result.json") if (sd / "result.json").is_file() else {}
            layer = int(result.get("config", {}).get("layer", 0))
            rows = {"steps": [s for s, _ in cks]}
            # behaviour read at the LLC's checkpoints (exact: the readout the em run's transition uses)
            behaviour = [
                em_readout(org.with_model(adapter_on_copy(org.model, folder)))["broad_misalignment"]
                for _step, folder in cks
            ]
            for key, restrict in (("adapter", "adapter"), ("layer", f"layer:{layer}")):
                vals, mcses, conv, reasons = [], [], [], []
                for _step, folder in cks:
                    model = adapter_on_copy(org.model, folder)
                    lf, data = self_kl_loss_fn(model, ids, pad_token_id=0)
                    res = estimate_llc(model, lf, data, n=n_docs, config=config, restrict=restrict)
                    vals.append(res.value)
                    mcses.append(res.mcse if res.converged else None)
                    conv.append(res.converged)
                    reasons.append(res.reasons)
                rows[key] = {
                    "restrict": restrict,
                    "llc": vals,
                    "mcse": mcses,
                    "converged": conv,
                    "reasons": reasons,
                }
            tr = result.get("transition") or {}
            rows["behaviour"] = {
                "steps": rows["steps"],
                "broad_misalignment": behaviour,
                "source": "read at each checkpoint (em_readout, exact)",
                "b_norm": tr.get("b_norm"),
                "local_cos": tr.get("local_cos"),
            }
            rows["order"] = {k: _jump_order(rows["steps"], rows[k], behaviour) for k in ("adapter", "layer")}
            units[f"{cond}/{sd.name}"] = rows
    n_units = len(units)
    order_counts = {
        k: {o: sum(u["order"][k]["order"] == o for u in units.values()) for o in ORDERS}
        for k in ("adapter", "layer")
    }
    metrics = {
        "units": units,
        "conditions": list(conditions),
        "loss": "self_kl",
        "n_docs": n_docs,
        "order_k_of_n": {k: {o: f"{c} of {n_units}" for o, c in v.items()} for k, v in order_counts.items()},
        "jump_definition": JUMP_DEFINITION,
        "gradient_norm": "not recorded (the em run does not save it)",
        "figures": [f"figures/{TRAJECTORY_FIGURE}"],
    }
    run.write_metrics(metrics)
    return StudyResult(run.path, metrics)


# ------------------------------------------------------------------------------------------------------------
# The LLC along the basin path, with gates and a verdict on "does it peak at the boundary?"

PATH_FIGURE = "llc_path.png"
PATH_DIRECTIONS = ("plain", "random", "inoculated")


def _scan_grid(ts) -> list[float]:
    """The default behavioural scan grid: four scan intervals per interval of the LLC grid ``ts``."""
    t = sorted(float(x) for x in ts)
    if len(t) < 2:
        return t
    return [round(float(x), 9) for x in np.linspace(t[0], t[-1], 4 * (len(t) - 1) + 1)]


def _path_bands(org, deltas: dict, scan_ts, level: float) -> tuple[dict, dict]:
    """Each seed's band: the crossing interval of broad misalignment on its own scan (plain, inoculated); the
    random control takes the paired plain seed's band (is there a peak at the same t without the adapter's
    direction?). Returns ``(bands, scans)``, per direction a list over seeds (a band is None: it never
    crosses)."""
    from ..measure.basins import scan
    from ..measure.llc import crossing_interval

    bands, scans = {}, {}
    for direc in ("plain", "inoculated"):
        scans[direc] = [
            scan(org, pname.removesuffix(".weight"), dw, scan_ts, n_loss_docs=0)["broad_misalignment"]
            for pname, dw in deltas[direc]
        ]
        bands[direc] = [crossing_interval(scan_ts, curve, level) for curve in scans[direc]]
    bands["random"] = bands["plain"][: len(deltas["random"])]
    return bands, scans


def run_path_study(
    em_run: str | Path,
    out: str | Path,
    *,
    config: SamplerConfig,
    band=None,
    ts=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    scan_ts=None,
    level: float = 0.5,
    points_per_band: int = 1,
    organism: str | Path | None = None,
    seeds: int | None = None,
    n_docs: int = 32,
    directions=PATH_DIRECTIONS,
    kl_directions=("forward", "reverse"),
    restricts=("all", "layer"),
    run_config: dict | None = None,
) -> StudyResult:
    """λ̂(t) at ``w0 + t dW`` for each fine-tuning seed's plain adapter, a random rank-1 direction of the same
    norm (seeded per seed, the basin study's control) and the inoculated adapter; every parameter moving
    (``all``) and only the adapted layer (``layer``); under the forward and the reverse self-KL (both 0 and
    minimal at every point, so each point is a local minimum of its loss). Every point carries its gates
    (withheld: null + reasons). For each combination the claim "λ̂ peaks inside the boundary band" gets a
    verdict over seeds (:func:`~persona_basins.measure.llc.peak_at_boundary_verdict`).

    Bands: each seed's own crossing interval of broad misalignment at ``level`` on a scan over ``scan_ts``
    (default four scan intervals per interval of ``ts``); the random control uses its plain seed's band; a
    seed that never crosses is excluded and counted. ``band=(LO, HI)``: one band for every seed instead (no
    scans). The LLC grid is ``ts`` with ``points_per_band`` points added inside every band that holds none
    (:func:`~persona_basins.measure.llc.refine_grid`). The figure is drawn from the metrics."""
    from ..measure.basins import random_weight_deltas
    from ..measure.llc import llc_along_path, peak_at_boundary_verdict, refine_grid
    from ..models.edits import adapter_on_copy, layer_of, single_lora_delta
    from ..models.organism import load_organism

    em_run = Path(em_run)
    if not (em_run / "adapters").is_dir():
        raise ArgumentError("em_run", f"{em_run}: not an em run folder (no adapters/)")
    if band is not None:
        band = tuple(float(b) for b in band)
        if len(band) != 2 or not band[0] <= band[1]:
            raise ArgumentError("band", f"must be two numbers LO <= HI, got {band}")
    bad = [d for d in directions if d not in PATH_DIRECTIONS]
    if bad:
        raise UserError(f"unknown direction(s) {bad}; choose from {', '.join(PATH_DIRECTIONS)}")
    if points_per_band < 1:
        raise UserError(f"points_per_band must be >= 1, got {points_per_band}")
    org = load_organism(em_run_organism(em_run, organism))
    ids = org.mixture_input_ids(n_docs, seed=123)
    plain = em_run_adapters(em_run, "plain", seeds)
    if not plain:
        raise ArgumentError("em_run", f"{em_run}: no plain adapters")
    inoc = em_run_adapters(em_run, "inoculated", seeds) if "inoculated" in directions else []
    scan_ts = _scan_grid(ts) if scan_ts is None else sorted(float(t) for t in scan_ts)
    run = RunDir(
        out,
        "llc_path",
        {
            **(run_config or {}),
            "em_run": str(em_run.resolve()),
            "organism": str(organism),
            "sampler": config.to_dict(),
            "band": list(band) if band is not None else None,
            "ts": list(ts),
            "scan_ts": scan_ts,
            "level": level,
            "points_per_band": points_per_band,
        },
    )
    deltas = {"plain": [], "random": [], "inoculated": []}
    for s, d in enumerate(plain):
        name, dw = single_lora_delta(adapter_on_copy(org.model, d))
        deltas["plain"].append((f"{name}.weight", dw))
        deltas["random"].append((f"{name}.weight", random_weight_deltas(dw, 1, seed=10_000 + s)[0]))
    for d in inoc:
        name, dw = single_lora_delta(adapter_on_copy(org.model, d))
        deltas["inoculated"].append((f"{name}.weight", dw))
    if band is None:
        bands, scans = _path_bands(org, deltas, scan_ts, level)
    else:
        bands, scans = {k: [band] * len(v) for k, v in deltas.items()}, None
    grid = refine_grid(ts, [b for d in directions for b in bands[d]], points_per_band=points_per_band)
    layer = layer_of(deltas["plain"][0][0])
    curves, verdicts = {}, {}
    for direc in directions:
        for rs in restricts:
            restrict = None if rs == "all" else f"layer:{layer}"
            for kd in kl_directions:
                key = f"{direc}/{rs}/{'self_kl' if kd == 'forward' else 'self_kl_reverse'}"
                per_seed = []
                for s, (pname, dw) in enumerate(deltas[direc]):
                    res = llc_along_path(
                        org.model,
                        {pname: dw},
                        grid,
                        data=ids,
                        n=n_docs,
                        pad_token_id=0,
                        restrict=restrict,
                        kl_direction=kd,
                        config=config.replace(seed=s),
                    )
                    rr = [r["result"] for r in res]
                    per_seed.append(
                        {
                            "seed": s,
                            "llc": [x.value for x in rr],
                            "mcse": [x.mcse if x.converged else None for x in rr],
                            "converged": [x.converged for x in rr],
                            "reasons": [x.reasons for x in rr],
                        }
                    )
                curves[key] = per_seed
                verdicts[key] = (
                    peak_at_boundary_verdict(
                        grid, [p["llc"] for p in per_seed], [p["mcse"] for p in per_seed], bands[direc]
                    )
                    if per_seed
                    else None
                )
    crossing = [b for b in bands["plain"] if b is not None]
    metrics = {
        "ts": grid,
        "ts_requested": list(ts),
        # the hull of the plain seeds' bands (what the figure shades); per seed: ``bands``
        "band": [min(b[0] for b in crossing), max(b[1] for b in crossing)] if crossing else None,
        "bands": {d: [list(b) if b is not None else None for b in bands[d]] for d in directions},
        "band_source": "given (--band), one for every seed"
        if band is not None
        else f"each seed's crossing interval of broad misalignment = {level:g} on its scan over scan_ts "
        "(random: the plain seed's band)",
        "scan_ts": scan_ts if scans is not None else None,
        "scans": scans,
        "layer": layer,
        "curves": curves,
        "verdicts": verdicts,
        "claim": "the LLC along w0 + t dW peaks inside the behavioural boundary band",
        "losses": {
            "self_kl": "KL(p_point || p_w): 0 and minimal at the point",
            "self_kl_reverse": "KL(p_w || p_point): 0 and minimal at the point; weights the tokens "
            "the moving model puts mass on",
        },
        "random_direction": "rank-1 a b^T with Gaussian factors, scaled to the plain adapter's |dW|, seed "
        "10000 + fine-tuning seed (measure.basins.random_weight_deltas: the basin study's control)",
        "figures": [f"figures/{PATH_FIGURE}"],
    }
    run.write_metrics(metrics)
    return StudyResult(run.path, metrics)


# --- one-line summaries the llc command prints (formatting only: the numbers are in metrics.json) -----------


def estimate_line(metrics: dict, chains: int) -> str:
    """``LLC = 12.3 ± 0.4 (95%, MCSE); chains=4, ...``; a withheld estimate shows its reasons, never its mean
    (the mean of chains off equilibrium is no estimate)."""
    llc, diag = metrics["llc"], metrics["diagnostics"]
    shown = f"withheld: {'; '.join(llc['reasons'])}"
    if llc["converged"]:
        shown = f"{llc['mean']:.4g} ± {1.96 * llc['mcse']:.2g} (95%, MCSE)"
    return (
        f"LLC = {shown}; chains={chains}, path={diag['path']}, R-hat={diag['rhat']:.3f}, "
        f"ESS={diag['ess_bulk']:.0f}, MALA={diag['mala_acceptance']:.2f}"
    )


def calibration_line(metrics: dict) -> str:
    rec = metrics["recommended"]
    if not rec:
        return "no setting passed the calibration gates (see the grid's reasons)"
    return (
        f"recommended: step_size={rec['step_size']:g}, nbeta={rec['nbeta']:.4g}, localization="
        f"{rec['localization']:g} (LLC {rec['llc']:.4g} ± {1.96 * rec['mcse']:.2g}, MALA "
        f"{rec['mala_acceptance']:.2f})"
    )


def stages_line(metrics: dict) -> str:
    boundaries = metrics["stage_boundaries"]
    untested = len(metrics.get("stage_candidates", [])) - len(boundaries)
    return (
        f"LLC ({metrics['loss']} loss) over {len(metrics['steps'])} checkpoints; stage boundaries at steps "
        f"{boundaries} ({untested} sign changes within the noise left out)"
    )
