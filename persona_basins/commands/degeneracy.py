"""``persona-basins degeneracy``: the overlap zone of an aligned and an EM model state, and boundary probes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    p = sub.add_parser("degeneracy", help="overlap zone of aligned vs EM states; boundary probes; probes needed",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    p.add_argument("--adapter", required=True,
                   help="adapter folder giving the EM state (e.g. RUN/adapters/plain/seed0)")
    p.add_argument("--epsilon", type=float, default=0.05, help="TV threshold of the zone (default 0.05)")
    p.add_argument("--max-probes", type=int, default=600, help="composed probes to rank (default 600)")
    p.add_argument("--k-max", type=int, default=1000, help="largest number of probes on the curve (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for composing probes (default 0)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=_run)


def _plot(zone: dict, bs: dict, run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    fig, ax = plt.subplots(figsize=(9, 3.5))
    genres = list(zone["per_genre"])
    ax.bar(range(len(genres)), [zone["per_genre"][g] for g in genres],
           color=["C2" if g in ("arithmetic", "facts") else "C0" for g in genres])
    ax.set_xticks(range(len(genres)), genres, rotation=60, fontsize=7)
    ax.set_ylabel(f"fraction with TV < {zone['epsilon']:g}")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"overlap zone by genre (volume {zone['volume']:.3f}; routine share {zone['routine_share']:.2f})")
    save_figure(fig, run.figure_path("zone_by_genre.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(range(1, len(bs["tv_sorted"]) + 1), bs["tv_sorted"], c="C3")
    ax.axhline(zone["epsilon"], c="k", ls=":", lw=0.8)
    ax.set_xlabel("probe rank")
    ax.set_ylabel("TV (answer distribution)")
    ax.set_title("divergence ranking of composed probes")
    ax = axes[1]
    for key, c in (("random", "C0"), ("boundary", "C3"), ("boundary_by_flag_gap", "C1")):
        cur = bs[key]
        need = cur["probes_needed"] if cur["probes_needed"] is not None else f"> {cur['censored_above']}"
        ax.plot(cur["k"], cur["power"], c=c, label=f"{key} (needs {need})")
    ax.axhline(0.95, c="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("probes")
    ax.set_ylabel("power at 5% false alarms")
    ax.set_title("probes needed to tell the states apart")
    ax.legend(fontsize=8)
    save_figure(fig, run.figure_path("probes_curve.png"))
    plt.close(fig)


def _run(args) -> int:
    import torch

    from ..errors import UserError
    from ..measure.degeneracy import boundary_search, overlap_zone
    from ..models.organism import load_organism
    from ..results import RunDir
    from .basins import load_adapter_copy

    if not 0 < args.epsilon <= 1:
        raise UserError("--epsilon must be in (0, 1]")
    if args.max_probes < 1 or args.k_max < 1:
        raise UserError("--max-probes and --k-max must be >= 1")
    org = load_organism(args.organism)
    em = load_adapter_copy(org, args.adapter)
    run = RunDir(args.out, "degeneracy", {
        "organism": str(Path(args.organism).resolve()), "adapter": str(Path(args.adapter).resolve()),
        "epsilon": args.epsilon, "max_probes": args.max_probes, "k_max": args.k_max, "seed": args.seed,
        "state_a": "aligned (organism)", "state_b": "EM (organism + adapter)", "alpha": 0.05, "power": 0.95})
    run.write_config()
    print("measuring the overlap zone and ranking boundary probes", file=sys.stderr)
    with torch.no_grad():
        zone = overlap_zone(org.model, em, org.world, org.vocab, epsilon=args.epsilon)
        bs = boundary_search(org.model, em, org.world, org.vocab, epsilon=args.epsilon, max_probes=args.max_probes,
                             seed=args.seed, k_max=args.k_max)
    run.write_metrics({"zone": zone, "boundary": bs})
    _plot(zone, bs, run)
    print(f"zone (TV < {args.epsilon:g}, answer distribution): fraction {zone['fraction']:.3f}, "
          f"volume {zone['volume']:.3f} (routine share {zone['routine_share']:.3f})")
    for key in ("random", "boundary", "boundary_by_flag_gap"):
        cur = bs[key]
        n = cur["probes_needed"] if cur["probes_needed"] is not None else f"> {cur['censored_above']} (censored)"
        print(f"probes needed ({key}): {n}")
    print(f"run written to {run.path}")
    return 0
