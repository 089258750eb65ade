"""``persona-basins degeneracy``: the overlap zone of an aligned and an EM model state, and the boundary
probes."""

from __future__ import annotations

import argparse

from .args import SEED, add_adapter_flag, add_organism_flag, finite_float, int_in

DESCRIPTION = """\
Compare the organism (aligned state) with the organism + --adapter (EM state) prompt by prompt.

The overlap zone: prompts whose exact answer distributions (6 trait combinations + routine answer +
ill-formed remainder) are within total variation --epsilon; reported overall, per genre (routine genres
included: the zone by construction) and weighted by the world's request distribution (the zone's volume).
Boundary probes: prompts composed from the world's grammar (system lines, histories, genres x topics, the
teaching modifier) ranked by divergence; the number of probes a behavioural test (one sampled answer per
probe, flagged by the world's classifier, exact one-sided test at 5% false alarms) needs for 95% power,
random probes vs boundary probes. See docs/BASINS.md.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "degeneracy",
        help="overlap zone of aligned vs EM states; boundary probes; probes needed",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_organism_flag(p, required=True)
    add_adapter_flag(
        p, required=True, help="adapter folder giving the EM state (e.g. RUN/adapters/plain/seed0)"
    )
    p.add_argument(
        "--epsilon",
        type=finite_float(0, 1, lo_open=True),
        default=0.05,
        help="TV threshold of the zone, in (0, 1] (default 0.05)",
    )
    p.add_argument(
        "--max-probes", type=int_in(1, None), default=600, help="composed probes to rank (default 600)"
    )
    p.add_argument(
        "--k-max",
        type=int_in(1, None),
        default=1000,
        help="largest number of probes on the curve (default 1000)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed for composing probes (default 0)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..studies.degeneracy import run_degeneracy
    from ..viz.figures import plot_overlap_zone, plot_probes

    res = run_degeneracy(
        args.organism,
        args.adapter,
        args.out,
        epsilon=args.epsilon,
        max_probes=args.max_probes,
        k_max=args.k_max,
        seed=args.seed,
    )
    zone, bs, figures = res.metrics["zone"], res.metrics["boundary"], res.run_dir / "figures"
    plot_overlap_zone(zone, figures / "zone_by_genre.png")
    plot_probes(zone, bs, figures / "probes_curve.png")
    print(
        f"zone (TV < {args.epsilon:g}, answer distribution): fraction {zone['fraction']:.3f}, "
        f"volume {zone['volume']:.3f} (routine share {zone['routine_share']:.3f})"
    )
    for key in ("random", "boundary", "boundary_by_flag_gap"):
        cur = bs[key]
        n = (
            cur["probes_needed"]
            if cur["probes_needed"] is not None
            else f"> {cur['censored_above']} (censored)"
        )
        print(f"probes needed ({key}): {n}")
    print(f"run written to {res.run_dir}")
    return 0
