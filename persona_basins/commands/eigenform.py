"""``persona-basins eigenform``: identity as a fixed point of a wake-perceive-act-sleep process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Is a persona kept by a recursive process more robust than one kept by fixed parameters?

One cycle: wake (the model state and its identity context, the assistant system line), perceive (sample
requests from the world), act (sample answers), sleep (a few SGD steps on every parameter, on its own
answers in the identity context, keeping only answers the model itself finds more likely under the
identity context than under no system line - no ground-truth labels inside the loop).

The start state is the organism with the --adapter (e.g. an EM adapter from `persona-basins em`) merged
at scale t (W + t*dW) for each t of --ts. After --cycles cycles the ground-truth readout measures broad
misalignment; it is compared with the static perturbed model and with the same cycle without the
identity context. metrics.json: return_rate, process_safe_scale, contraction_factor (mean and 95% CI over
--seeds), static_safe_scale (one deterministic number), per-cycle traces. See docs/EIGENFORM.md for every definition.
"""


def register(sub) -> None:
    p = sub.add_parser("eigenform", help="identity as an eigenform: does a self-consolidating process absorb a "
                       "rank-1 perturbation?", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    p.add_argument("--adapter", required=True, help="PEFT LoRA adapter folder trained on this organism")
    p.add_argument("--cycles", type=int, default=None, help="cycles per run (default 8; 3 with --fast)")
    p.add_argument("--seeds", type=int, default=None, help="sampling seeds (default 5; 2 with --fast)")
    p.add_argument("--ts", default=None,
                   help="comma-separated adapter scales t (default 0,1,2,3,4,6; 1,2 with --fast)")
    p.add_argument("--fast", action="store_true", help="small settings for a quick look (the demo's)")
    p.add_argument("--prompts", type=int, default=None, help="requests sampled per cycle (default 256)")
    p.add_argument("--sleep-steps", type=int, default=None, help="SGD steps per sleep (default 20)")
    p.add_argument("--sleep-lr", type=float, default=None, help="SGD learning rate of the sleep (default 0.1)")
    p.add_argument("--no-filter", action="store_true", help="keep every answer (no self-rating filter)")
    p.add_argument("--context", default="assistant", help="identity context: assistant or a persona name")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=_run)


def _positive(value, name):
    from ..errors import UserError

    if value is not None and value <= 0:
        raise UserError(f"{name} must be > 0, got {value}")
    return value


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

    from ..measure.eigenform import EigenformConfig
    from ..studies.eigenform import FAST_CONFIG, run_eigenform_command, summary_table
    from ..viz.figures import plot_eigenform

    _positive(args.cycles, "--cycles")
    _positive(args.seeds, "--seeds")
    _positive(args.prompts, "--prompts")
    _positive(args.sleep_steps, "--sleep-steps")
    _positive(args.sleep_lr, "--sleep-lr")
    ts = _parse_ts(args.ts)
    if not Path(args.adapter).is_dir():
        from ..errors import UserError

        raise UserError(f"adapter folder not found: {args.adapter}")
    cfg = EigenformConfig(context=args.context, self_filter=not args.no_filter)
    if args.fast:
        cfg = replace(cfg, **FAST_CONFIG)
    over = {"n_prompts": args.prompts, "sleep_steps": args.sleep_steps, "sleep_lr": args.sleep_lr}
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    res = run_eigenform_command(args.organism, args.adapter, args.out, cycles=args.cycles, seeds=args.seeds, ts=ts,
                                fast=args.fast, config=cfg, progress=sys.stderr.isatty())
    plot_eigenform(res["metrics"], res["run"].figure_path("eigenform.png"))
    print(summary_table(res["metrics"]))
    print(f"run written to {res['run'].path}")
    return 0
