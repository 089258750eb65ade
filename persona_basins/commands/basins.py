"""``persona-basins basins``: scan w0 + t * delta along the adapter, persona and random directions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Basin scans on the organism: the model w0 + t * delta for t on a grid 0..--t-max, where delta is
  adapter   the trained rank-1 adapter's weight delta (t = 1 is the fine-tuned model)
  persona   the persona vector (toxic - helpful) at the adapter's layer as a rank-1 edit of its module,
            scaled to the adapter's Frobenius norm
  random    --random rank-1 directions of the same norm (controls)
and, for inoculation, the plain adapter read with the inoculation line in the system prompt and every
--inoculated-adapter. Each point: exact broad misalignment, persona projection, LM loss on the mixture.
Reports t* (misalignment crosses --level, default 0.5; censored when it never does inside the grid), the sharpness, the
thinness t*(random) / t*(persona), and the inoculation widening factor with 95% CIs over the adapters
given (repeat --adapter / --inoculated-adapter, one per seed). See docs/BASINS.md.
"""


def register(sub) -> None:
    p = sub.add_parser("basins", help="basin scans: critical magnitude t* along adapter / persona / random directions",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    p.add_argument("--adapter", required=True, action="append",
                   help="plain (EM) adapter folder, e.g. RUN/adapters/plain/seed0; repeat for seeds")
    p.add_argument("--inoculated-adapter", action="append", default=[],
                   help="adapter trained with the inoculation line; repeat for seeds")
    p.add_argument("--t-max", type=float, default=3.0, help="largest t on the grid (default 3)")
    p.add_argument("--points", type=int, default=13, help="grid points from 0 to --t-max (default 13)")
    p.add_argument("--level", type=float, default=0.5,
                   help="broad-misalignment level that defines t* (default 0.5)")
    p.add_argument("--random", type=int, default=3, help="random control directions (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random directions and documents (default 0)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=_run)


def load_adapter_copy(org, adapter_dir):
    """The organism's model with a saved adapter, on a copy (the organism's own model stays the base)."""
    import copy

    from ..models.adapters import load_adapter

    model = load_adapter(copy.deepcopy(org.model), adapter_dir)
    model.eval()
    return model


def _plot(metrics: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    d = metrics["directions"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(d["scans"]["adapter"]["t"], d["scans"]["adapter"]["broad_misalignment"], "o-", c="C3", label="adapter")
    ax.plot(d["scans"]["persona"]["t"], d["scans"]["persona"]["broad_misalignment"], "s-", c="C0",
            label="persona direction")
    for i, s in enumerate(d["scans"]["random"]):
        ax.plot(s["t"], s["broad_misalignment"], "-", c="0.6", lw=1, label="random" if i == 0 else None)
    inoc = metrics["inoculation"]["cases"]
    styles = {"plain_in_inoculated_context": ("C2", "plain adapter, inoculated context"),
              "inoculated": ("C1", "inoculated adapter")}
    for key, (c, lab) in styles.items():
        if key in inoc:
            b = inoc[key]["band"]
            ax.plot(b["t"], b["mean"], "--", c=c, label=f"{lab} (n={b['n']})")
            if b["n"] > 1:
                ax.fill_between(b["t"], b["ci_low"], b["ci_high"], color=c, alpha=0.2)
    ax.axhline(metrics["level"], c="k", lw=0.8, ls=":")
    ax.set_xlabel("t  (weights w0 + t * delta)")
    ax.set_ylabel("broad misalignment")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("misalignment vs t")
    ax = axes[1]
    ax.plot(d["scans"]["adapter"]["t"], d["scans"]["adapter"]["loss"], "o-", c="C3", label="adapter")
    ax.plot(d["scans"]["persona"]["t"], d["scans"]["persona"]["loss"], "s-", c="C0", label="persona direction")
    for i, s in enumerate(d["scans"]["random"]):
        ax.plot(s["t"], s["loss"], "-", c="0.6", lw=1, label="random" if i == 0 else None)
    ax.set_xlabel("t")
    ax.set_ylabel("LM loss on the mixture")
    ax.legend(fontsize=8)
    ax.set_title("loss vs t")
    save_figure(fig, path)
    plt.close(fig)


def _fmt_t(c: dict) -> str:
    if c["t_star"] is not None:
        return f"{c['t_star']:.3f}"
    if c["censored_above"] is not None:
        return f"> {c['censored_above']:g} (censored)"
    return f"< {c['censored_below']:g} (censored)"


def _run(args) -> int:
    import numpy as np
    import torch

    from ..errors import UserError
    from ..measure.basins import direction_scans, inoculation_scans, inoculation_summary, module_layer, weight_delta
    from ..measure.vectors import persona_vector
    from ..models.organism import load_organism
    from ..results import RunDir

    if not args.t_max > 0:
        raise UserError("--t-max must be > 0")
    if args.points < 2:
        raise UserError("--points must be >= 2")
    if not 0 < args.level < 1:
        raise UserError("--level must be in (0, 1)")
    if args.random < 0:
        raise UserError("--random must be >= 0")
    org = load_organism(args.organism)
    plain = [load_adapter_copy(org, a) for a in args.adapter]
    inoc = [load_adapter_copy(org, a) for a in args.inoculated_adapter]
    ts = np.linspace(0.0, args.t_max, args.points).tolist()
    run = RunDir(args.out, "basins", {
        "organism": str(Path(args.organism).resolve()), "adapters": [str(Path(a).resolve()) for a in args.adapter],
        "inoculated_adapters": [str(Path(a).resolve()) for a in args.inoculated_adapter], "t": ts,
        "t_max": args.t_max, "points": args.points, "random": args.random, "seed": args.seed, "level": args.level})
    run.write_config()
    name, _ = weight_delta(plain[0])
    layer = module_layer(name)
    print(f"scanning {name} (layer {layer}) on {args.points} points to t = {args.t_max:g}", file=sys.stderr)
    with torch.no_grad():
        vector = persona_vector(org.model, org.world, org.vocab, layer, n=128, seed=args.seed)
    directions = direction_scans(org.model, org.world, org.vocab, plain[0], ts, n_random=args.random,
                                 seed=args.seed, vector=vector, level=args.level)
    scans = inoculation_scans(org.model, org.world, org.vocab, plain, inoc, ts, vector=vector, layer=layer)
    summary = inoculation_summary(scans, level=args.level)
    metrics = {"module": name, "layer": layer, "t": ts, "level": args.level, "directions": directions,
               "inoculation": summary, "persona_vector_norm": float(vector.norm())}
    run.write_metrics(metrics)
    _plot(metrics, run.figure_path("misalignment_vs_t.png"))
    crit = directions["t_star"]
    print(f"t* adapter  {_fmt_t(crit['adapter'])}")
    print(f"t* persona  {_fmt_t(crit['persona'])}")
    for i, c in enumerate(crit["random"]):
        print(f"t* random{i} {_fmt_t(c)}")
    for comp, h in summary["holds"].items():
        print(f"inoculation ({comp}): holds = {h['holds']}  [{h['why']}]")
    print(f"run written to {run.path}")
    return 0
