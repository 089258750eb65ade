"""``persona-basins llc``: the local learning coefficient (SGLD); parse, call one study, draw, print."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .args import SEED, THREADS, add_field_flag, finite_float, int_in, int_or_auto, name_list, number_list

DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of a causal LM at its current weights by localised SGLD (chains
batched in one process; see docs/LLC.md). --model is any Hugging Face causal LM folder: for an organism the
data are documents of its pretraining mixture, otherwise --data FILE.txt (one document per line). With
--adapter (a PEFT adapter folder) only the adapter moves unless --restrict says otherwise: 'adapter',
'layer:I', 'layer:I/head:H', or a regular expression over parameter names.

  persona-basins llc --model DIR [--adapter DIR] [--restrict PATTERN] [--data FILE.txt] --out RUN
"""
STEP_SIZES = "1e-5,3e-5,1e-4,3e-4,1e-3"
POSITIVE_LIST = number_list(positive=True)


def _add_sampler_args(parser, *, draws=200, burnin=50, chains=4) -> None:
    group = parser.add_argument_group("sampler")
    add = group.add_argument
    add("--chains", type=int_in(1, 4096), default=chains, help=f"SGLD chains (default {chains})")
    add("--draws", type=int_in(1, None), default=draws, help=f"draws per chain (default {draws})")
    add("--burnin", type=int_in(0, None), default=burnin, help=f"burn-in steps per chain (default {burnin})")
    add_field_flag(group, "--step-size", "SamplerConfig", "step_size")
    add_field_flag(group, "--localization", "SamplerConfig", "localization")
    add_field_flag(group, "--nbeta", "SamplerConfig", "nbeta")
    add("--batch-size", type=int_in(1, None), default=16, help="SGLD minibatch in documents (default 16)")
    add("--n-docs", type=int_in(1, None), default=256, help="documents in the dataset (default %(default)s)")
    add("--n", type=int_in(2, None), help="dataset size n in the posterior (default: --n-docs)")
    add("--seq-len", type=int_in(2, None), default=64, help="max tokens per --data document (default 64)")
    add_field_flag(group, "--precondition", "SamplerConfig", "precondition")
    add("--seed", type=SEED, default=0, help="seed for the data sample and the chains (default 0)")
    add("--independent-batches", action="store_true", help="each chain its own minibatches (default: shared)")
    add("--strict", action="store_true", help="an estimate failing the equilibrium gates is an error")
    # auto: measured from idle cores and step times; the numbers never depend on it
    add("--workers", type=int_or_auto(1), default="auto", help="CPU processes for the chains: N or auto")
    add("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    add("--threads", type=THREADS, dest="llc_threads", help="torch threads (default: the global --threads)")


def _add_model_args(parser, required: bool = False) -> None:
    add = parser.add_argument
    add("--model", required=required, help="Hugging Face causal LM folder (or an organism folder)")
    add("--adapter", help="PEFT adapter folder applied on top of --model")
    add("--restrict", help="which parameters move: adapter | layer:I | layer:I/head:H | REGEX")
    add("--data", help="text file, one document per line (required unless --model is an organism)")
    add("--out", required=required, help="run folder to write")
    # fp32 also for auto and on a GPU: SGLD steps of 1e-5 relative size vanish in bf16
    add("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="fp32", help="weights' dtype (fp32)")


def register(sub) -> None:
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser("llc", help="the local learning coefficient (SGLD)", description=DESCRIPTION, **raw)
    _add_model_args(p)
    _add_sampler_args(p)
    calibrate = f"calibrate the step size over STEPS (default {STEP_SIZES}), then estimate with the pick"
    const = POSITIVE_LIST(STEP_SIZES)  # argparse applies type= to a default, never to a const
    p.add_argument("--calibrate", nargs="?", const=const, type=POSITIVE_LIST, metavar="STEPS", help=calibrate)
    p.set_defaults(func=_run_estimate)
    commands = p.add_subparsers(dest="llc_command", metavar="{calibrate,stages,trajectory,path}")

    def command(name: str, text: str, func, *, em: str = "", sampler=None, **defaults):
        """A subcommand with the sampler flags (and, with ``em``, the flags naming an em run)."""
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", **raw)
        _add_sampler_args(parser, **(sampler or {}))
        parser.set_defaults(func=func, **defaults)  # after the flags: it overrides their defaults
        if em:
            parser.add_argument("--em", required=True, help=f"an `em` run folder ({em})")
            parser.add_argument("--organism", help="organism folder (default: the one the em run names)")
            parser.add_argument("--seeds", type=int_in(1, None), help="use the first K fine-tuning seeds")
            parser.add_argument("--out", required=True, help="run folder to write")
        return parser

    c = command("calibrate", "sweep SGLD step size x n_beta x gamma, recommend a setting", _run_calibrate)
    _add_model_args(c, required=True)
    c.add_argument("--step-sizes", type=POSITIVE_LIST, default=STEP_SIZES, help=f"(default {STEP_SIZES})")
    c.add_argument("--nbetas", type=POSITIVE_LIST, help="n_beta values (default: --nbeta or n / log n)")
    c.add_argument("--localizations", type=POSITIVE_LIST, help="gamma values (default: --localization)")

    text = "LLC over pretraining checkpoints; stage boundaries at the smoothed curve's critical points"
    s = command("stages", text, _run_stages, sampler={"draws": 100, "burnin": 20, "chains": 2})
    s.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    s.add_argument("--out", required=True, help="run folder to write")
    s.add_argument("--max-checkpoints", type=int_in(1, None), help="use at most this many (evenly spaced)")
    s.add_argument("--smooth", type=finite_float(0, None), default=1.0, help="Gaussian width in checkpoints")
    s.add_argument("--no-layers", action="store_true", help="skip the per-layer wrLLC curves")
    s.add_argument("--no-heads", action="store_true", help="skip the per-head wrLLC curves")
    text = "LLC (self-KL) at an em run's adapter checkpoints beside broad misalignment: which rises first"
    t = command("trajectory", text, _run_trajectory, em="trained with --checkpoint-every K", n_docs=32)
    t.add_argument("--conditions", type=name_list(), default="plain,inoculated", help="comma-separated")
    text = "LLC along w0 + t dW (plain, random, inoculated) and the verdict on 'it peaks inside the band'"
    q = command("path", text, _run_path, em="with plain and inoculated adapters", n_docs=32)
    q.add_argument(
        "--band",
        type=number_list(2, 2),
        default=None,
        help="LO,HI: one boundary band for every seed (default: each seed's own crossing interval)",
    )
    q.add_argument("--ts", type=number_list(2), default="0,0.5,1,1.5,2,2.5,3", help="comma-separated t grid")
    q.add_argument("--directions", type=name_list(), default="plain,random,inoculated", help="any of these")
    q.add_argument("--losses", type=name_list(("forward", "reverse")), default="forward,reverse")
    q.add_argument("--restricts", type=name_list(("all", "layer")), default="all,layer", help="all | layer")


def _sampler_config(args):
    """Applies ``--threads`` and returns the one SamplerConfig built from the flags (it checks itself)."""
    from ..measure.llc import SamplerConfig

    if args.llc_threads is not None:  # else the global --threads, applied by the CLI
        import torch

        torch.set_num_threads(args.llc_threads)
    renamed = {"num_chains": "chains", "num_draws": "draws", "num_burnin": "burnin"}
    same = ("step_size", "localization", "nbeta", "batch_size", "seed", "precondition", "workers")
    settings = {field: getattr(args, flag) for field, flag in {**renamed, **dict(zip(same, same))}.items()}
    return SamplerConfig(**settings, shared_batches=not args.independent_batches)


def _study(args, name: str, first=None, *, flags=(), title: str = "", **kwargs):
    """Runs ``studies.llc.<name>(first, --out, ...)`` with the sampler config, the ``flags`` named and
    ``kwargs``; draws its figures. ``first`` defaults to the --model target, loaded after the flag check."""
    from ..studies import llc
    from ..viz.llc_figures import draw_llc_figures

    config, run_config = _sampler_config(args), {k: v for k, v in vars(args).items() if k != "func"}
    if first is None:
        if not args.model or not args.out:
            raise UserError(f"{'--out' if args.model else '--model'} is required (or use `llc stages`)")
        target = {f: getattr(args, f) for f in ("adapter", "restrict", "n_docs", "seq_len", "seed", "device")}
        first = llc.load_target(args.model, data_file=args.data, dtype=args.dtype, **target)
    kwargs.update({flag: getattr(args, flag) for flag in flags})
    result = getattr(llc, name)(first, args.out, config=config, run_config=run_config, **kwargs)
    draw_llc_figures(result, title=title)
    return result


def _run_estimate(args) -> int:
    extra = {"progress": sys.stderr.isatty(), "calibrate_steps": args.calibrate}
    result = _study(args, "run_estimate", flags=("n",), title=f"LLC {args.model}", **extra)
    llc, diag = result.metrics["llc"], result.metrics["diagnostics"]
    reasons = "; ".join(llc["reasons"])
    shown = f"withheld: {reasons}"  # the mean of chains off equilibrium is no estimate: never printed
    if llc["converged"]:
        shown = f"{llc['mean']:.4g} ± {1.96 * llc['mcse']:.2g} (95%, MCSE)"
    print(
        f"LLC = {shown}; chains={args.chains}, path={diag['path']}, R-hat={diag['rhat']:.3f}, "
        f"ESS={diag['ess_bulk']:.0f}, MALA={diag['mala_acceptance']:.2f} -> {result.run_dir}"
    )
    if not llc["converged"]:
        message = f"LLC estimate not at equilibrium (withheld in studies): {reasons}"
        if args.strict:
            raise UserError(message + " (--strict)")
        print(f"warning: {message}", file=sys.stderr)
    return 0


def _run_calibrate(args) -> int:
    flags = ("step_sizes", "nbetas", "localizations", "n")
    result = _study(args, "run_calibrate", flags=flags, progress=sys.stderr.isatty())
    rec = result.metrics["recommended"]
    shown = "no setting passed the calibration gates (see the grid's reasons)"
    if rec:
        shown = (
            f"recommended: step_size={rec['step_size']:g}, nbeta={rec['nbeta']:.4g}, localization="
            f"{rec['localization']:g} (LLC {rec['llc']:.4g} ± {1.96 * rec['mcse']:.2g}, MALA "
            f"{rec['mala_acceptance']:.2f})"
        )
    print(f"{shown} -> {result.run_dir}")
    return 0


def _run_stages(args) -> int:
    flags = ("n_docs", "n", "max_checkpoints", "smooth", "device")
    parts = {"layers": not args.no_layers, "heads": not args.no_heads}
    result = _study(args, "run_stages", args.organism, flags=flags, **parts)
    steps, boundaries = result.metrics["steps"], result.metrics["stage_boundaries"]
    print(f"LLC over {len(steps)} checkpoints; stage boundaries at steps {boundaries} -> {result.run_dir}")
    return 0


def _run_trajectory(args) -> int:
    flags = ("organism", "conditions", "seeds", "n_docs", "device")
    result = _study(args, "run_trajectory", args.em, flags=flags)
    for unit, rows in result.metrics["units"].items():
        adapter, layer = rows["order"]["adapter"]["order"], rows["order"]["layer"]["order"]
        print(f"[{unit}] LLC rise vs broad-misalignment jump: adapter {adapter}, layer {layer}")
    print(f"run written to {result.run_dir}")
    return 0


def _run_path(args) -> int:
    flags = ("band", "ts", "organism", "seeds", "n_docs", "directions", "restricts")
    result = _study(args, "run_path_study", args.em, flags=flags, kl_directions=args.losses)
    for key, verdict in result.metrics["verdicts"].items():
        if verdict:
            counts = f"{verdict['supports']} support, {verdict['contradicts']} contradict"
            print(f"{key}: {verdict['verdict']} ({counts})")
    print(f"run written to {result.run_dir}")
    return 0
