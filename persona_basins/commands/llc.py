"""``persona-basins llc``: the local learning coefficient (SGLD), its calibration, and developmental stages."""

from __future__ import annotations

import argparse
import math
import sys

from .args import DEFAULT_THREADS, POSITIVE, SEED, THREADS, finite_float, int_in

DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of a causal LM at its current weights by localised SGLD
(chains batched in one process; see docs/LLC.md).

  persona-basins llc --model DIR [--adapter DIR] [--restrict PATTERN] [--data FILE.txt] --out RUN
      DIR is any Hugging Face causal LM folder. For an organism folder the data are documents from its
      pretraining mixture; otherwise --data is a text file, one document per line. With --adapter (a PEFT
      adapter folder) only the adapter parameters move unless --restrict says otherwise.
      --restrict: 'adapter', 'layer:I', 'layer:I/head:H', or a regular expression over parameter names.
  persona-basins llc calibrate --model DIR ... --out RUN
      sweep step size x n_beta (x localisation), score each setting by the equilibrium gates, recommend one
      by a fixed rule (docs/LLC.md), plot the grid and the traces.
  persona-basins llc stages --organism DIR --out RUN
      LLC over the organism's pretraining checkpoints; stage boundaries at the critical points of the
      smoothed LLC curve; per-layer and per-head weight-restricted LLC curves.
"""


def _add_sampler_args(p, *, draws=200, burnin=50, chains=4) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--chains", type=int_in(1, 4096), default=chains, help=f"SGLD chains (default {chains})")
    g.add_argument("--draws", type=int_in(1, None), default=draws, help=f"draws per chain (default {draws})")
    g.add_argument(
        "--burnin", type=int_in(0, None), default=burnin, help=f"burn-in steps per chain (default {burnin})"
    )
    g.add_argument("--step-size", type=POSITIVE, default=1e-4, help="SGLD step size epsilon (default 1e-4)")
    g.add_argument(
        "--localization",
        type=finite_float(0, None),
        default=100.0,
        help="localisation strength gamma (default 100)",
    )
    g.add_argument(
        "--nbeta", type=POSITIVE, default=None, help="inverse temperature n*beta (default n / log n)"
    )
    g.add_argument(
        "--batch-size", type=int_in(1, None), default=16, help="SGLD minibatch size in documents (default 16)"
    )
    g.add_argument(
        "--n-docs", type=int_in(1, None), default=256, help="documents used as the dataset (default 256)"
    )
    g.add_argument(
        "--n", type=int_in(2, None), default=None, help="dataset size n in the posterior (default: --n-docs)"
    )
    g.add_argument(
        "--seq-len", type=int_in(2, None), default=64, help="max tokens per document for --data (default 64)"
    )
    g.add_argument("--precondition", choices=["none", "rmsprop"], default="none", help="SGLD preconditioner")
    g.add_argument("--seed", type=SEED, default=0, help="seed for the data sample and the chains (default 0)")
    g.add_argument(
        "--independent-batches",
        action="store_true",
        help="each chain draws its own minibatches (independent chains; default: shared per step)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="an estimate that fails the equilibrium gates is an error (default: a warning)",
    )
    g.add_argument(
        "--workers",
        default="auto",
        help="CPU processes the chains are split over (one thread each): N or 'auto' (default: measured "
        "from idle cores and step times); the numbers do not depend on it",
    )
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    g.add_argument(
        "--threads",
        type=THREADS,
        default=None,
        dest="llc_threads",
        help=f"torch intra-op threads (default: the global --threads, {DEFAULT_THREADS}; see docs/LLC.md)",
    )


def _add_model_args(p, required: bool = False) -> None:
    p.add_argument("--model", required=required, help="Hugging Face causal LM folder (or an organism folder)")
    p.add_argument("--adapter", help="PEFT adapter folder applied on top of --model")
    p.add_argument("--restrict", help="which parameters move: adapter | layer:I | layer:I/head:H | REGEX")
    p.add_argument("--data", help="text file, one document per line (required unless --model is an organism)")
    p.add_argument("--out", required=required, help="run folder to write")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="fp32",
        help="weights' dtype (default and auto: fp32, also on a GPU: SGLD steps vanish in bf16)",
    )


def register(sub) -> None:
    p = sub.add_parser(
        "llc",
        help="local learning coefficient (SGLD): estimate, calibrate, developmental stages",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p)
    _add_sampler_args(p)
    p.add_argument(
        "--calibrate",
        nargs="?",
        const="1e-5,3e-5,1e-4,3e-4,1e-3",
        default=None,
        metavar="STEPS",
        help="calibrate the step size first (short chains, the calibration rule of docs/LLC.md) over "
        "STEPS (default 1e-5,3e-5,1e-4,3e-4,1e-3) and estimate with the recommended setting",
    )
    p.set_defaults(func=_run_estimate)
    llc_sub = p.add_subparsers(dest="llc_command", metavar="{calibrate,stages,trajectory,path}")

    c = llc_sub.add_parser(
        "calibrate",
        help="sweep step size x n_beta and recommend a setting",
        description="Sweep SGLD step size x n_beta, recommend a setting, plot the traces.",
    )
    _add_model_args(c, required=True)
    _add_sampler_args(c, draws=200, burnin=50, chains=4)
    c.add_argument("--step-sizes", default="1e-5,3e-5,1e-4,3e-4,1e-3", help="comma-separated step sizes")
    c.add_argument(
        "--nbetas", default=None, help="comma-separated n_beta values (default: --nbeta or n / log n)"
    )
    c.add_argument(
        "--localizations",
        default=None,
        help="comma-separated localisation strengths gamma (default: --localization)",
    )
    c.set_defaults(func=_run_calibrate)

    s = llc_sub.add_parser(
        "stages",
        help="LLC over pretraining checkpoints: stage boundaries, per-layer/head",
        description="LLC over an organism's pretraining checkpoints. Stage boundaries are "
        "the critical points of the Gaussian-smoothed LLC curve; per-layer and "
        "per-head weight-restricted LLC curves are estimated alongside.",
    )
    s.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    s.add_argument("--out", required=True, help="run folder to write")
    s.add_argument("--max-checkpoints", type=int, default=None, help="use at most this many (evenly spaced)")
    s.add_argument(
        "--smooth", type=float, default=1.0, help="Gaussian smoothing width in checkpoints (default 1)"
    )
    s.add_argument("--no-layers", action="store_true", help="skip the per-layer wrLLC curves")
    s.add_argument("--no-heads", action="store_true", help="skip the per-head wrLLC curves")
    _add_sampler_args(s, draws=100, burnin=20, chains=2)
    s.set_defaults(func=_run_stages)

    t = llc_sub.add_parser(
        "trajectory",
        help="LLC at the saved adapter checkpoints of an em run",
        description="The adapter- and layer-restricted LLC (self-KL at each checkpoint) at every "
        "saved adapter checkpoint of an `em` run, beside broad misalignment, |B| and "
        "the B trajectory's local cosine; which moves first, per seed.",
    )
    t.add_argument("--em", required=True, help="an `em` run folder (train with --checkpoint-every K)")
    t.add_argument("--organism", help="organism folder (default: the one the em run names)")
    t.add_argument(
        "--conditions", default="plain,inoculated", help="comma-separated (default plain,inoculated)"
    )
    t.add_argument("--seeds", type=int, default=None, help="use the first K seeds of each condition")
    t.add_argument("--out", required=True, help="run folder to write")
    _add_sampler_args(t, draws=200, burnin=50, chains=4)
    t.set_defaults(func=_run_trajectory, n_docs=32)

    q = llc_sub.add_parser(
        "path",
        help="LLC along w0 + t dW (plain, random, inoculated) with a verdict on the peak",
        description="λ̂(t) along each fine-tuning seed's adapter direction, a random direction of "
        "the same norm and the inoculated adapter; all parameters and the adapted "
        "layer; forward and reverse self-KL; gated points; the verdict on 'λ̂ peaks "
        "inside the boundary band' (confirmed / refuted / undecided).",
    )
    q.add_argument("--em", required=True, help="an `em` run folder (plain and inoculated adapters)")
    q.add_argument(
        "--band", required=True, help="LO,HI: the t range of the behavioural boundary (e.g. from basins)"
    )
    q.add_argument("--ts", default="0,0.5,1,1.5,2,2.5,3", help="comma-separated t grid")
    q.add_argument("--organism", help="organism folder (default: the one the em run names)")
    q.add_argument("--seeds", type=int, default=None, help="use the first K fine-tuning seeds")
    q.add_argument("--directions", default="plain,random,inoculated", help="comma-separated subset")
    q.add_argument("--losses", default="forward,reverse", help="self-KL directions: forward,reverse")
    q.add_argument(
        "--restricts", default="all,layer", help="all (every parameter), layer (the adapted layer)"
    )
    q.add_argument("--out", required=True, help="run folder to write")
    _add_sampler_args(q, draws=200, burnin=50, chains=4)
    q.set_defaults(func=_run_path, n_docs=32)


# ------------------------------------------------------------------------------------------------------------


def _apply_threads(args) -> None:
    if args.llc_threads is None:
        return  # the global --threads was applied by the CLI
    import torch

    torch.set_num_threads(args.llc_threads)


def _sampler_config(args):
    """The one SamplerConfig built from the flags (it validates itself: no second check here)."""
    from ..measure.llc import SamplerConfig

    return SamplerConfig(
        step_size=args.step_size,
        localization=args.localization,
        nbeta=args.nbeta,
        num_chains=args.chains,
        num_draws=args.draws,
        num_burnin=args.burnin,
        batch_size=args.batch_size,
        seed=args.seed,
        precondition=args.precondition,
        shared_batches=not args.independent_batches,
        workers=_workers(args.workers),
    )


def _workers(text: str):
    from ..errors import UserError

    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--workers must be a positive integer or 'auto', got {text!r}") from None


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _target(args):
    from ..errors import UserError
    from ..studies.llc import load_target

    if not args.model:
        raise UserError("--model is required (or use `persona-basins llc stages --organism DIR`)")
    if not args.out:
        raise UserError("--out is required")
    return load_target(
        args.model,
        adapter=args.adapter,
        restrict=args.restrict,
        data_file=args.data,
        n_docs=args.n_docs,
        seq_len=args.seq_len,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )


def _run_estimate(args) -> int:
    from ..studies.llc import TRACE_FIGURE, run_estimate
    from ..viz.llc_figures import plot_traces

    _apply_threads(args)
    config = _sampler_config(args)
    steps = _floats(args.calibrate, "--calibrate") if args.calibrate else None
    target = _target(args)
    out = run_estimate(
        target,
        args.out,
        config=config,
        n=args.n,
        run_config=_config(args),
        progress=sys.stderr.isatty(),
        calibrate_steps=steps,
    )
    res, run = out["result"], out["run"]
    plot_traces(
        {"loss (minibatch) per draw": res.loss_trace, "λ per draw = nβ(L_B(w) − L_B(w*))": res.llc_trace},
        run.figure_path(TRACE_FIGURE),
        title=f"LLC {args.model}",
    )
    d = res.diagnostics
    shown = (
        f"{res.mean:.4g} ± {1.96 * res.mcse:.2g} (95%, MCSE"
        if res.converged
        else (f"withheld (unchecked mean {res.mean:.4g}")
    )
    print(
        f"LLC = {shown}; chains={args.chains}, path={d['path']}, "
        f"R-hat={d['rhat']:.3f}, ESS={d['ess_bulk']:.0f}, MALA={d['mala_acceptance']:.2f}) -> {run.path}"
    )
    _gate_message(res, args.strict)
    return 0


def _gate_message(res, strict: bool) -> None:
    """One line when the estimate failed its equilibrium gates: a warning, or with --strict an error."""
    from ..errors import UserError

    if res.converged:
        return
    msg = "LLC estimate not at equilibrium (withheld in studies): " + "; ".join(res.reasons)
    if strict:
        raise UserError(msg + " (--strict)")
    print(f"warning: {msg}", file=sys.stderr)


def _floats(text: str, flag: str) -> list[float]:
    from ..errors import UserError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not v > 0 or v == float("inf") for v in vals):
        raise UserError(f"{flag} must list positive finite numbers, got {text!r}")
    return vals


def _run_calibrate(args) -> int:
    from ..studies.llc import CALIBRATION_FIGURE, CALIBRATION_GRID_FIGURE, run_calibrate
    from ..viz.llc_figures import plot_calibration, plot_traces

    _apply_threads(args)
    config = _sampler_config(args)
    steps = _floats(args.step_sizes, "--step-sizes")
    nbetas = _floats(args.nbetas, "--nbetas") if args.nbetas else None
    gammas = _floats(args.localizations, "--localizations") if args.localizations else None
    target = _target(args)
    out = run_calibrate(
        target,
        args.out,
        config=config,
        step_sizes=steps,
        nbetas=nbetas,
        localizations=gammas,
        n=args.n,
        run_config=_config(args),
        progress=sys.stderr.isatty(),
    )
    run = out["run"]
    plot_calibration(out["metrics"]["grid"], run.figure_path(CALIBRATION_GRID_FIGURE))
    plot_traces(
        {f"nβ={k[0]:.3g} ε={k[1]:.0e} γ={k[2]:g}": v for k, v in out["traces"].items()},
        run.figure_path(CALIBRATION_FIGURE),
        title="LLC calibration traces",
    )
    rec = out["metrics"]["recommended"]
    if rec:
        print(
            f"recommended: step_size={rec['step_size']:g}, nbeta={rec['nbeta']:.4g}, "
            f"localization={rec['localization']:g} (LLC {rec['llc']:.4g} ± {1.96 * rec['mcse']:.2g}, "
            f"MALA {rec['mala_acceptance']:.2f}) -> {run.path}"
        )
    else:
        print(f"no setting passed the calibration gates (see the grid's reasons); see {run.path}")
    return 0


def _run_stages(args) -> int:
    from ..studies.llc import STAGE_FIGURES, run_stages
    from ..viz.llc_figures import plot_stages

    _apply_threads(args)
    config = _sampler_config(args)
    out = run_stages(
        args.organism,
        args.out,
        config=config,
        n_docs=args.n_docs,
        n=args.n,
        max_checkpoints=args.max_checkpoints,
        smooth=args.smooth,
        layers=not args.no_layers,
        heads=not args.no_heads,
        run_config=_config(args),
        device=args.device,
    )
    run, m = out["run"], out["metrics"]
    plot_stages(
        m["steps"],
        out["curves"],
        out["stds"],
        out["critical"],
        out["n_layers"],
        out["n_heads"],
        {k: run.figure_path(v) for k, v in STAGE_FIGURES.items()},
    )
    print(
        f"LLC over {len(m['steps'])} checkpoints; stage boundaries at steps {m['stage_boundaries']} -> {run.path}"
    )
    return 0


def _run_trajectory(args) -> int:
    from ..errors import UserError
    from ..studies.llc import TRAJECTORY_FIGURE, run_trajectory
    from ..viz.llc_figures import plot_trajectory

    _apply_threads(args)
    config = _sampler_config(args)
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if not conds:
        raise UserError("--conditions must name at least one condition")
    if args.seeds is not None and args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    out = run_trajectory(
        args.em,
        args.out,
        config=config,
        organism=args.organism,
        conditions=conds,
        seeds=args.seeds,
        n_docs=args.n_docs,
        run_config=_config(args),
        device=args.device,
    )
    run, m = out["run"], out["metrics"]
    plot_trajectory(m, run.figure_path(TRAJECTORY_FIGURE))
    for k, u in m["units"].items():
        o = u["order"]
        print(
            f"[{k}] LLC rise vs broad-misalignment jump: adapter {o['adapter']['order']}, "
            f"layer {o['layer']['order']}"
        )
    print(f"run written to {run.path}")
    return 0


def _names(text: str, flag: str, allowed) -> list[str]:
    from ..errors import UserError

    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in allowed]
    if not vals or bad:
        raise UserError(f"{flag} must list some of {', '.join(allowed)}, got {text!r}")
    return vals


def _run_path(args) -> int:
    from ..errors import UserError
    from ..studies.llc import PATH_DIRECTIONS, PATH_FIGURE, run_path_study
    from ..viz.llc_figures import plot_path

    _apply_threads(args)
    config = _sampler_config(args)
    try:
        band = [float(x) for x in args.band.split(",")]
        ts = [float(x) for x in args.ts.split(",") if x.strip()]
    except ValueError:
        raise UserError("--band and --ts must be comma-separated numbers") from None
    if len(band) != 2 or not all(math.isfinite(x) for x in band + ts) or len(ts) < 2:
        raise UserError("--band must be LO,HI and --ts at least two finite numbers")
    out = run_path_study(
        args.em,
        args.out,
        config=config,
        band=band,
        ts=ts,
        organism=args.organism,
        seeds=args.seeds,
        n_docs=args.n_docs,
        directions=_names(args.directions, "--directions", PATH_DIRECTIONS),
        kl_directions=_names(args.losses, "--losses", ("forward", "reverse")),
        restricts=_names(args.restricts, "--restricts", ("all", "layer")),
        run_config=_config(args),
    )
    run, m = out["run"], out["metrics"]
    plot_path(m, run.figure_path(PATH_FIGURE))
    for k, v in m["verdicts"].items():
        if v:
            print(f"{k}: {v['verdict']} ({v['supports']} support, {v['contradicts']} contradict)")
    print(f"run written to {run.path}")
    return 0
