"""``persona-basins basins``: scan w0 + t * delta along the adapter, persona and random directions."""

from __future__ import annotations

import argparse

from .args import add_adapter_flag, add_em_run_flag, add_field_flag, add_organism_flag, add_seeds_flag

DESCRIPTION = """\
Basin scans on the organism: the model w0 + t * delta for t on a grid 0..--t-max, where delta is
  adapter   the trained rank-1 adapter's weight delta (t = 1 is the fine-tuned model)
  persona   the persona vector (toxic - helpful) at the adapter's layer as a rank-1 edit of its module,
            scaled to the adapter's Frobenius norm
  random    --random rank-1 directions of the same norm (controls)
and, for inoculation, the plain adapter read with the inoculation line in the system prompt and every
--inoculated-adapter. Each point: exact broad misalignment, persona projection, LM loss on the mixture.
Reports t* (misalignment crosses --level, default 0.5; censored when it never does inside the grid), the
sharpness, the thinness t*(random) / t*(persona), and the inoculation widening factor with 95% CIs over
the adapters given: --em-run RUN (an em run's plain and inoculated adapters, --seeds N the first N) or
--adapter / --inoculated-adapter repeated, one per seed. See docs/BASINS.md.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "basins",
        help="basin scans: critical magnitude t* along adapter / persona / random directions",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_em_run_flag(p, help="an `em --organism` run: its plain and inoculated adapters (or give --adapter)")
    add_organism_flag(p, help="organism folder (default: the one the --em-run names)")
    add_seeds_flag(p, help="use the em run's first N fine-tuning seeds (default: all)")
    add_adapter_flag(
        p, repeat=True, help="plain (EM) adapter folder, e.g. RUN/adapters/plain/seed0; repeat for seeds"
    )
    p.add_argument(
        "--inoculated-adapter",
        action="append",
        default=[],
        metavar="DIR",
        help="adapter trained with the inoculation line; repeat for seeds",
    )
    # the scan: one flag per BasinsConfig field (type, range, default and help from the field)
    add_field_flag(p, "--t-max", "BasinsConfig", "t_max")
    add_field_flag(p, "--points", "BasinsConfig", "points", help="grid points from 0 to --t-max")
    add_field_flag(p, "--level", "BasinsConfig", "level")
    add_field_flag(p, "--random", "BasinsConfig", "random")
    add_field_flag(p, "--seed", "BasinsConfig", "seed")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.set_defaults(func=_run)


def _adapters(args) -> tuple:
    """``(organism, plain adapters, inoculated adapters)`` from --em-run or the --adapter flags."""
    from ..errors import UserError

    if args.em_run is None:
        if not args.adapter or not args.organism:
            raise UserError("give --em-run RUN, or --organism DIR and --adapter DIR (repeat for seeds)")
        return args.organism, args.adapter, args.inoculated_adapter
    if args.adapter or args.inoculated_adapter:
        raise UserError("give --em-run RUN or --adapter / --inoculated-adapter, not both")
    from ..studies.em import em_run_adapters, em_run_organism

    plain = em_run_adapters(args.em_run, "plain", args.seeds)
    if not plain:
        raise UserError(f"--em-run {args.em_run}: no plain adapters under adapters/plain/ (an `em` run?)")
    inoculated = em_run_adapters(args.em_run, "inoculated", args.seeds)
    return em_run_organism(args.em_run, args.organism), plain, inoculated


def _run(args) -> int:
    from ..measure.basin_verdicts import format_t_star
    from ..studies.basins import BasinsConfig, run_basins
    from ..viz.figures import plot_basins

    scan = BasinsConfig(
        t_max=args.t_max, points=args.points, level=args.level, random=args.random, seed=args.seed
    )
    organism, plain, inoculated = _adapters(args)
    res = run_basins(
        organism,
        plain,
        inoculated,
        args.out,
        t_max=scan.t_max,
        points=scan.points,
        level=scan.level,
        n_random=scan.random,
        seed=scan.seed,
    )
    metrics = res.metrics
    plot_basins(metrics, res.run_dir / "figures" / "misalignment_vs_t.png")
    print(f"module {metrics['module']} (layer {metrics['layer']})")
    for s, d in enumerate(metrics["directions"]):
        crit = d["t_star"]
        print(
            f"[adapter {s}] t* adapter {format_t_star(crit['adapter'])}   "
            f"t* persona {format_t_star(crit['persona'])}   "
            + "   ".join(f"t* random{i} {format_t_star(c)}" for i, c in enumerate(crit["random"]))
        )
    for comp, h in metrics["inoculation_summary"]["holds"].items():
        print(f"inoculation ({comp}): holds = {h['holds']}  [{h['why']}]")
    print(f"run written to {res.run_dir}")
    return 0
