"""``persona-basins llc``: the local learning coefficient (SGLD); parse, call one study, draw, print."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .args import (
    add_adapter_flag,
    add_dtype_flag,
    add_em_run_flag,
    add_model_flag,
    add_organism_flag,
    add_sampler_flags,
    add_seeds_flag,
    finite_float,
    int_in,
    name_list,
    number_list,
)

DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of a causal LM at its current weights by localised SGLD (chains
batched in one process; see docs/LLC.md). --organism DIR: an organism, whose data are documents of its
pretraining mixture; --model: any Hugging Face causal LM (a hub id or a folder) with --data FILE.txt (one
document per line). With --adapter (a PEFT adapter folder) only the adapter moves unless --restrict says
otherwise: 'adapter', 'layer:I', 'layer:I/head:H', or a regular expression over parameter names.
"""
STEP_SIZES = "1e-5,3e-5,1e-4,3e-4,1e-3"
POSITIVE_LIST = number_list(positive=True)


def _add_model_args(parser, required: bool = False) -> None:
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=required)
    add_organism_flag(source)
    add_model_flag(source, help="any Hugging Face causal LM: a hub id or a local folder (with --data)")
    add_adapter_flag(parser, help="PEFT adapter folder applied on top of the model")
    add("--restrict", help="which parameters move: adapter | layer:I | layer:I/head:H | REGEX")
    add("--data", metavar="FILE.txt", help="text file, one document per line (required with --model)")
    add("--seq-len", type=int_in(2, None), default=64, help="max tokens per --data document (default 64)")
    add("--out", required=required, metavar="RUN", help="run folder to write")
    # auto is fp32 also on a GPU: SGLD steps of 1e-5 relative size vanish in bf16 (resolved in _study)
    add_dtype_flag(parser, auto="fp32, also on a GPU (SGLD steps of 1e-5 relative size vanish in bf16)")


def register(sub) -> None:
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser("llc", help="the local learning coefficient (SGLD)", description=DESCRIPTION, **raw)
    _add_model_args(p)
    add_sampler_flags(p)
    calibrate = f"calibrate the step size over STEPS (default {STEP_SIZES}), then estimate with the pick"
    const = POSITIVE_LIST(STEP_SIZES)  # argparse applies type= to a default, never to a const
    p.add_argument("--calibrate", nargs="?", const=const, type=POSITIVE_LIST, metavar="STEPS", help=calibrate)
    p.set_defaults(func=_run_estimate)
    commands = p.add_subparsers(dest="llc_command", metavar="{calibrate,stages,trajectory,path}")

    def command(name: str, text: str, func, *, em: str = "", sampler=None, **defaults):
        """A subcommand with the sampler flags (and, with ``em``, the flags naming an em run)."""
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", **raw)
        add_sampler_flags(parser, **(sampler or {}))
        parser.set_defaults(func=func, **defaults)  # after the flags: it overrides their defaults
        if em:
            add_em_run_flag(parser, required=True, help=f"an `em --organism` run folder ({em})")
            add_organism_flag(parser, help="organism folder (default: the one the em run names)")
            add_seeds_flag(parser, help="use the em run's first N fine-tuning seeds (default: all)")
            parser.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
        return parser

    c = command("calibrate", "sweep SGLD step size x n_beta x gamma, recommend a setting", _run_calibrate)
    _add_model_args(c, required=True)
    c.add_argument("--step-sizes", type=POSITIVE_LIST, default=STEP_SIZES, help=f"(default {STEP_SIZES})")
    c.add_argument("--nbetas", type=POSITIVE_LIST, help="n_beta values (default: --nbeta or n / log n)")
    c.add_argument("--localizations", type=POSITIVE_LIST, help="gamma values (default: --localization)")

    text = "LLC (self-KL) over pretraining checkpoints; stage boundaries tested against the MCSE"
    s = command("stages", text, _run_stages, sampler={"draws": 100, "burnin": 20, "chains": 2})
    add_organism_flag(s, required=True)
    s.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    s.add_argument("--max-checkpoints", type=int_in(1, None), help="use at most this many (evenly spaced)")
    s.add_argument("--smooth", type=finite_float(0, None), default=1.0, help="kernel width, median step gaps")
    s.add_argument("--no-layers", action="store_true", help="skip the per-layer wrLLC curves")
    s.add_argument("--no-heads", action="store_true", help="skip the per-head wrLLC curves")
    text = "LLC (self-KL) at an em run's adapter checkpoints beside broad misalignment: which rises first"
    t = command("trajectory", text, _run_trajectory, em="trained with --checkpoint-every K", n_docs=32)
    t.add_argument("--conditions", type=name_list(), default="plain,inoculated", help="comma-separated")
    text = "LLC along w0 + t dW (plain, random, inoculated) and the verdict on 'it peaks inside the band'"
    q = command("path", text, _run_path, em="with plain and inoculated adapters", n_docs=32)
    band = "LO,HI: one boundary band for every seed (default: each seed's own crossing interval)"
    q.add_argument("--band", type=number_list(2, 2), help=band)
    q.add_argument("--ts", type=number_list(2), default="0,0.5,1,1.5,2,2.5,3", help="comma-separated t grid")
    q.add_argument("--directions", type=name_list(), default="plain,random,inoculated", help="any of these")
    q.add_argument("--losses", type=name_list(("forward", "reverse")), default="forward,reverse")
    q.add_argument("--restricts", type=name_list(("all", "layer")), default="all,layer", help="all | layer")


def _study(args, name: str, first=None, *, flags=(), title: str = "", **kwargs):
    """Runs ``studies.llc.<name>(first, --out, ...)`` with the one SamplerConfig built from the flags (it
    checks itself), the ``flags`` named and ``kwargs``, and draws its figures. ``first`` defaults to the
    --organism or --model target, loaded after the sampler check."""
    from ..measure.llc import SamplerConfig
    from ..studies import llc
    from ..viz.llc_figures import draw_llc_figures

    if getattr(args, "dtype", None) == "auto":  # recorded as used: fp32 (see _add_model_args)
        args.dtype = "fp32"
    renamed = {"num_chains": "chains", "num_draws": "draws", "num_burnin": "burnin"}
    same = ("step_size", "localization", "nbeta", "batch_size", "seed", "precondition", "workers")
    settings = {field: getattr(args, flag) for field, flag in {**renamed, **dict(zip(same, same))}.items()}
    config = SamplerConfig(**settings, shared_batches=not args.independent_batches)
    run_config = {k: v for k, v in vars(args).items() if k != "func"}
    if first is None:
        model = args.organism or args.model
        if not model or not args.out:
            missing = "--out" if model else "--organism DIR or --model DIR_OR_HUB_ID"
            raise UserError(f"{missing} is required (or use `llc stages`)")
        target = {f: getattr(args, f) for f in ("adapter", "restrict", "n_docs", "seq_len", "seed", "device")}
        first = llc.load_target(model, data_file=args.data, dtype=args.dtype, **target)
    kwargs.update({flag: getattr(args, flag) for flag in flags})
    result = getattr(llc, name)(first, args.out, config=config, run_config=run_config, **kwargs)
    draw_llc_figures(result, title=title)
    return result


def _run_estimate(args) -> int:
    extra = {"progress": True, "calibrate_steps": args.calibrate}
    from ..studies.llc import CalibrationFailed
    from ..viz.llc_figures import draw_llc_figures

    try:
        title = f"LLC {args.organism or args.model}"
        result = _study(args, "run_estimate", flags=("n",), title=title, **extra)
    except CalibrationFailed as failed:  # the grid is saved: draw its figures, then report
        draw_llc_figures(failed.result)
        raise
    from ..studies.llc import estimate_line

    llc = result.metrics["llc"]
    print(f"{estimate_line(result.metrics, args.chains)} -> {result.run_dir}")
    if not llc["converged"]:
        message = f"LLC estimate not at equilibrium (withheld in studies): {'; '.join(llc['reasons'])}"
        if args.strict:
            raise UserError(message + " (--strict)")
        print(f"warning: {message}", file=sys.stderr)
    return 0


def _run_calibrate(args) -> int:
    flags = ("step_sizes", "nbetas", "localizations", "n")
    from ..studies.llc import calibration_line

    result = _study(args, "run_calibrate", flags=flags, progress=True)
    print(f"{calibration_line(result.metrics)} -> {result.run_dir}")
    return 0


def _run_stages(args) -> int:
    flags = ("n_docs", "n", "max_checkpoints", "smooth", "device")
    parts = {"layers": not args.no_layers, "heads": not args.no_heads}
    from ..studies.llc import stages_line

    result = _study(args, "run_stages", args.organism, flags=flags, **parts)
    print(f"{stages_line(result.metrics)} -> {result.run_dir}")
    return 0


def _run_trajectory(args) -> int:
    flags = ("organism", "conditions", "seeds", "n_docs", "device")
    result = _study(args, "run_trajectory", args.em_run, flags=flags)
    for unit, rows in result.metrics["units"].items():
        adapter, layer = rows["order"]["adapter"]["order"], rows["order"]["layer"]["order"]
        print(f"[{unit}] LLC rise vs broad-misalignment jump: adapter {adapter}, layer {layer}")
    print(f"run written to {result.run_dir}")
    return 0


def _run_path(args) -> int:
    flags = ("band", "ts", "organism", "seeds", "n_docs", "directions", "restricts")
    result = _study(args, "run_path_study", args.em_run, flags=flags, kl_directions=args.losses)
    for key, verdict in result.metrics["verdicts"].items():
        if verdict:
            counts = f"{verdict['supports']} support, {verdict['contradicts']} contradict"
            print(f"{key}: {verdict['verdict']} ({counts})")
    print(f"run written to {result.run_dir}")
    return 0
