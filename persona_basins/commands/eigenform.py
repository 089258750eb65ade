"""``persona-basins eigenform``: identity as a fixed point of a wake-perceive-act-sleep process."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_adapter_flag, add_field_flag, add_organism_flag, add_seeds_flag, int_in

DESCRIPTION = """\
Does a persona kept by a recursive process return after a perturbation that breaks the static model?

One cycle: wake (the model state and its identity context, the assistant system line), perceive (sample
requests from the world), act (sample --candidates answers per request), think (the model scores them
against its identity: likelihood, PMI against no system line, consistency with its own earlier answers
kept in a memory; it keeps the best - no ground-truth labels inside the loop), sleep (plain SGD on every
parameter). Process variants (--arms): sampled (sleep on the chosen answers), distill (context
distillation, no sampling), replay (plus a fixed memory of the unperturbed self's answers), mixture (plus a
share of the pretraining mixture); also expected_map (noise-floor check) and no_identity (ablation).

The start states are the organism with the --adapter merged at scale t (W + t*dW): by default the first
scale of a static scan where the static model breaks and one below it, always with t = 0. Trajectories
share their random numbers, so the paired distance ||theta_k(t) - theta_k(0)|| is measured without a
sampling noise floor. metrics.json: verdict (yes / no / undecided, closest variant), per variant the
return rate, paired contraction, final misalignment and well-formedness (mean, 95% interval and per-seed
values over --seeds), gradient norms and clip fraction per cycle, traces. See docs/EIGENFORM.md.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "eigenform",
        help="identity as an eigenform: does a self-consolidating process bring the "
        "persona back after a perturbation?",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_organism_flag(p, required=True)
    add_adapter_flag(p, required=True, help="PEFT LoRA adapter folder trained on this organism")
    p.add_argument(
        "--cycles", type=int_in(1, 10**4), default=None, help="cycles per run (default 6; 2 with --fast)"
    )
    add_seeds_flag(p, help="sampling seeds (default 5; 2 with --fast)")
    p.add_argument(
        "--ts",
        default=None,
        help="comma-separated adapter scales t (default: where the static model breaks and one below)",
    )
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated process variants (default "
        "sampled,distill,replay,mixture; also expected_map, no_identity)",
    )
    p.add_argument("--fast", action="store_true", help="small settings for a quick look (the demo's)")
    # default=None: the config's value, or --fast's
    fast = "; default {} ({} with --fast)"
    add_field_flag(
        p,
        "--prompts",
        "EigenformConfig",
        "n_prompts",
        default=None,
        help="requests per cycle" + fast.format(256, 32),
    )
    add_field_flag(
        p,
        "--candidates",
        "EigenformConfig",
        "n_candidates",
        default=None,
        help="answers sampled per request for think" + fast.format(4, 2),
    )
    add_field_flag(
        p,
        "--think",
        "EigenformConfig",
        "think",
        default=None,
        help="think score; default likelihood+pmi+consistency",
    )
    add_field_flag(
        p,
        "--sleep-steps",
        "EigenformConfig",
        "sleep_steps",
        default=None,
        help="SGD steps per sleep" + fast.format(20, 8),
    )
    add_field_flag(
        p,
        "--sleep-lr",
        "EigenformConfig",
        "sleep_lr",
        default=None,
        help="SGD learning rate of the sleep; default 0.05",
    )
    add_field_flag(
        p,
        "--sleep-clip",
        "EigenformConfig",
        "sleep_clip",
        default=None,
        help="gradient-norm clip of the sleep; default 2",
    )
    add_field_flag(p, "--context", "EigenformConfig", "context")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.set_defaults(func=_run)


def _parse_ts(text):
    from ..errors import UserError

    if text is None:
        return None
    try:
        ts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--ts must be comma-separated numbers, got {text!r}") from None
    if not ts or any(t < 0 for t in ts):
        raise UserError(f"--ts must be non-empty scales t >= 0, got {text!r}")
    return ts


def _run(args) -> int:
    from dataclasses import replace

    from ..errors import UserError
    from ..measure.eigenform import EigenformConfig
    from ..studies.eigenform import FAST_CONFIG, run_eigenform_command, summary_table
    from ..viz.figures import plot_eigenform

    ts = _parse_ts(args.ts)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    if args.arms is not None and not arms:
        raise UserError(f"--arms must name at least one arm, got {args.arms!r}")
    if not Path(args.adapter).is_dir():
        raise UserError(f"adapter folder not found: {args.adapter}")
    cfg = EigenformConfig(context=args.context)
    if args.fast:
        cfg = replace(cfg, **FAST_CONFIG)
    over = {
        "n_prompts": args.prompts,
        "sleep_steps": args.sleep_steps,
        "sleep_lr": args.sleep_lr,
        "sleep_clip": args.sleep_clip,
        "n_candidates": args.candidates,
        "think": args.think,
    }
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    res = run_eigenform_command(
        args.organism,
        args.adapter,
        args.out,
        cycles=args.cycles,
        seeds=args.seeds,
        ts=ts,
        fast=args.fast,
        config=cfg,
        progress=True,
        arms=arms,
    )
    plot_eigenform(res.metrics, res.run_dir / "figures" / "eigenform.png")
    print(summary_table(res.metrics))
    print(f"run written to {res.run_dir}")
    return 0
