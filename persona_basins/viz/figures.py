"""Static figures (matplotlib, PNG) for the run folders: one home for every plot a command writes.

Each function takes the JSON-able metrics a study returned and a path, and writes the PNG atomically.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def figure(path, *args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` inside the block; the PNG is written atomically at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_basins(metrics: dict, path) -> None:
    """Misalignment and LM loss along w0 + t * delta: adapter, persona and random directions (first seed),
    and the inoculation cases' mean over seeds with a 95% band."""
    d = metrics["directions"][0]
    cases = metrics["inoculation_summary"]["cases"]
    with figure(path, 1, 2, figsize=(11, 4)) as (_fig, axes):
        for ax, key, ylabel in (
            (axes[0], "broad_misalignment", "broad misalignment"),
            (axes[1], "loss", "LM loss on the mixture"),
        ):
            ax.plot(
                d["scans"]["adapter"]["t"], d["scans"]["adapter"][key], "o-", c="C3", label="adapter (seed 0)"
            )
            ax.plot(
                d["scans"]["persona"]["t"],
                d["scans"]["persona"][key],
                "s-",
                c="C0",
                label="persona direction",
            )
            for i, s in enumerate(d["scans"]["random"]):
                ax.plot(s["t"], s[key], "-", c="0.6", lw=1, label="random" if i == 0 else None)
            ax.set_xlabel("t  (weights w0 + t * delta)")
            ax.set_ylabel(ylabel)
        ax = axes[0]
        styles = {
            "plain_in_inoculated_context": ("C2", "plain adapter, inoculated context"),
            "inoculated": ("C1", "inoculated adapter"),
        }
        for key, (c, lab) in styles.items():
            if key in cases:
                b = cases[key]["band"]
                ax.plot(b["t"], b["mean"], "--", c=c, label=f"{lab} (n={b['n']})")
                if b["n"] > 1:
                    ax.fill_between(b["t"], b["ci_low"], b["ci_high"], color=c, alpha=0.2)
        ax.axhline(metrics["level"], c="k", lw=0.8, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("misalignment vs t")
        axes[1].set_title("loss vs t")
        for ax in axes:
            ax.legend(fontsize=8)


def plot_eigenform(m: dict, path) -> None:
    """Per process variant (columns): the paired distance ||theta_k(t) - theta_k(0)|| over cycles, divided by
    its start t * ||dW|| (top; thin
    lines per seed, thick the mean) and broad misalignment (solid) and well-formed mass (dashed) over cycles
    (bottom; mean over seeds), one colour per perturbation scale t."""
    import matplotlib.pyplot as plt
    import numpy as np

    arms = m["arms"]
    with figure(path, 2, len(arms), figsize=(3.6 * len(arms), 6.4), squeeze=False) as (fig, axes):
        cmap = plt.get_cmap("viridis")
        n = max(len(m["ts"]) - 1, 1)
        for j, arm in enumerate(arms):
            ax, bx = axes[0, j], axes[1, j]
            for i, t in enumerate(m["ts"]):
                c = cmap(i / n)
                runs = m["traces"][arm][i]
                if t > 0:
                    pd = np.array([tr["paired_distance"] for tr in runs], dtype=float)
                    pd = (
                        pd / pd[:, :1]
                    )  # relative to the perturbation itself: contraction reads the same at every t
                    for row in pd:
                        ax.plot(np.arange(len(row)), row, color=c, lw=0.6, alpha=0.5)
                    ax.plot(
                        np.arange(pd.shape[1]),
                        pd.mean(0),
                        color=c,
                        lw=2,
                        label=f"t={t:g}" + (" (breaks)" if m["breaking"][i] else ""),
                    )
                bm = np.array([tr["broad_misalignment"] for tr in runs], dtype=float).mean(0)
                wf = np.array([tr["wellformed"] for tr in runs], dtype=float).mean(0)
                bx.plot(np.arange(len(bm)), bm, color=c, label=f"t={t:g}")
                bx.plot(np.arange(len(wf)), wf, color=c, ls="--")
            ax.set_title(f"{arm}: paired distance / start", fontsize=9)
            ax.set_xlabel("cycle")
            ax.set_ylabel("distance / start distance")
            ax.legend(fontsize=7)
            bx.axhline(m["settings"]["return_level"], color="gray", ls=":", lw=1)
            bx.set_title(f"{arm}: misaligned (—), well-formed (--)", fontsize=9)
            bx.set_xlabel("cycle")
            bx.set_ylabel("rate (mean over seeds)")
            bx.set_ylim(0, 1)
        axes[1, 0].legend(fontsize=7)
        fig.suptitle(f"verdict: {m['verdict']['answer']} (closest: {m['verdict']['closest']})", fontsize=10)
        fig.tight_layout()


def plot_overlap_zone(zone: dict, path) -> None:
    """The share of each genre's prompts inside the overlap zone (routine genres in green)."""
    from matplotlib.patches import Patch

    with figure(path, figsize=(9, 3.5)) as (_fig, ax):
        genres = list(zone["per_genre"])
        ax.bar(
            range(len(genres)),
            [zone["per_genre"][g] for g in genres],
            color=["C2" if g in ("arithmetic", "facts") else "C0" for g in genres],
        )
        ax.set_xticks(range(len(genres)), genres, rotation=60, fontsize=7)
        ax.set_xlabel("genre")
        ax.legend(
            handles=[Patch(color="C2", label="routine genre"), Patch(color="C0", label="content genre")],
            fontsize=8,
        )
        ax.set_ylabel(f"fraction with TV < {zone['epsilon']:g}")
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"behavioural overlap by genre (volume {zone['volume']:.3f}; "
            f"routine share {zone['routine_share']:.2f})"
        )


def plot_probes(zone: dict, bs: dict, path) -> None:
    """The divergence ranking of composed probes and the power curves of the behavioural test."""
    with figure(path, 1, 2, figsize=(11, 4)) as (_fig, axes):
        ax = axes[0]
        ax.plot(range(1, len(bs["tv_sorted"]) + 1), bs["tv_sorted"], c="C3", label="probe TV")
        ax.axhline(zone["epsilon"], c="k", ls=":", lw=0.8, label=f"ε = {zone['epsilon']:g}")
        ax.legend(fontsize=8)
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


EM_FIGURE = "em_broad_misalignment.png"


def plot_em(em: dict, path, *, title: str = "emergent misalignment by fine-tuning condition") -> None:
    """Broad misalignment per condition: every seed as a point (the outcome is often bimodal: a seed goes
    broad or stays narrow), the mean as a bar, its interval as a line, the "broad" threshold and the base
    organism's rate. ``em``: the metrics of ``em --organism`` (or the demo's ``emergent_misalignment``)."""
    stats = em["broad_misalignment"]
    conditions = list(stats)
    with figure(path, figsize=(1.6 * len(conditions) + 2.5, 4)) as (_fig, ax):
        for x, condition in enumerate(conditions):
            stat = stats[condition]
            seeds = [v for v in stat.get("per_seed") or [] if v is not None]
            jitter = [0.18 * ((i % 5) / 4 - 0.5) for i in range(len(seeds))]  # spread, never random
            ax.scatter(
                [x + j for j in jitter], seeds, s=22, c="C3", zorder=3, label="one seed" if x == 0 else None
            )
            ax.hlines(stat["mean"], x - 0.28, x + 0.28, colors="k", lw=2, label="mean" if x == 0 else None)
            if stat.get("ci_low") is not None:
                ax.vlines(x + 0.3, stat["ci_low"], stat["ci_high"], colors="0.4", lw=1.5,
                          label=(stat.get("method") or "95% interval") if x == 0 else None)  # fmt: skip
            if stat.get("k_above") is not None:
                ax.annotate(f"{stat['k_above']} of {stat['n']}", (x, 1.02), ha="center", fontsize=8)
        threshold = next((s["threshold"] for s in stats.values() if s.get("threshold") is not None), None)
        if threshold is not None:
            ax.axhline(threshold, c="C1", ls="--", lw=0.8, label=f"broad: ≥ {threshold:.2f} (k of n above)")
        base = (em.get("base") or {}).get("broad_misalignment")
        if base is not None:
            ax.axhline(base, c="C2", ls=":", lw=1, label=f"base organism {base:.3f}")
        ax.set_xticks(range(len(conditions)), conditions, rotation=20, fontsize=8)
        ax.set_xlabel("fine-tuning condition")
        ax.set_ylabel("broad misalignment (exact, non-code genres)")
        ax.set_ylim(-0.02, 1.08)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def plot_em_layers(table: dict, path) -> None:
    """``em --layer all``: broad misalignment of the plain and inoculated fine-tunes at every layer, every
    seed a point, the mean a line."""
    rows = table["layers"]
    layers = [r["layer"] for r in rows]
    with figure(path, figsize=(7, 4)) as (_fig, ax):
        for key, color, offset in (
            ("broad_misalignment_plain", "C3", -0.1),
            ("broad_misalignment_inoculated", "C0", 0.1),
        ):
            name = key.removeprefix("broad_misalignment_")
            ax.plot(layers, [r[key]["mean"] for r in rows], "-", c=color, lw=1.2, label=f"{name}: mean")
            for r in rows:
                seeds = [v for v in r[key].get("per_seed") or [] if v is not None]
                ax.scatter([r["layer"] + offset] * len(seeds), seeds, s=14, c=color, alpha=0.7)
        ax.scatter([], [], s=14, c="0.4", label="one seed")
        ax.set_xticks(layers)
        ax.set_xlabel("layer of the rank-1 adapter")
        ax.set_ylabel("broad misalignment (exact, non-code genres)")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"emergent misalignment by layer (best: layer {table['best_layer']})", fontsize=10)
        ax.legend(fontsize=8)
