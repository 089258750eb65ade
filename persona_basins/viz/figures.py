"""Static figures (matplotlib, PNG) for the run folders: one home for every plot a command writes.

Each function takes the JSON-able metrics a study returned and a path, and writes the PNG atomically.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def _figure(path, *args, **kwargs):
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
    with _figure(path, 1, 2, figsize=(11, 4)) as (_fig, axes):
        for ax, key, ylabel in ((axes[0], "broad_misalignment", "broad misalignment"),
                                (axes[1], "loss", "LM loss on the mixture")):
            ax.plot(d["scans"]["adapter"]["t"], d["scans"]["adapter"][key], "o-", c="C3", label="adapter (seed 0)")
            ax.plot(d["scans"]["persona"]["t"], d["scans"]["persona"][key], "s-", c="C0", label="persona direction")
            for i, s in enumerate(d["scans"]["random"]):
                ax.plot(s["t"], s[key], "-", c="0.6", lw=1, label="random" if i == 0 else None)
            ax.set_xlabel("t  (weights w0 + t * delta)")
            ax.set_ylabel(ylabel)
        ax = axes[0]
        styles = {"plain_in_inoculated_context": ("C2", "plain adapter, inoculated context"),
                  "inoculated": ("C1", "inoculated adapter")}
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
    """Broad misalignment over cycles (mean over seeds) per t and arm, with the static value at cycle 0."""
    import matplotlib.pyplot as plt
    import numpy as np

    arms = m["arms"]
    with _figure(path, 1, len(arms) + 1, figsize=(4.2 * (len(arms) + 1), 3.4), squeeze=False) as (fig, axes):
        cmap = plt.get_cmap("viridis")
        n = max(len(m["ts"]) - 1, 1)
        for j, arm in enumerate(arms):
            ax = axes[0, j]
            for i, t in enumerate(m["ts"]):
                ys = np.array([tr["broad_misalignment"] for tr in m["traces"][arm][i]], dtype=float)
                ax.plot(np.arange(ys.shape[1]), ys.mean(0), color=cmap(i / n), label=f"t={t:g}")
            ax.axhline(m["settings"]["return_level"], color="gray", ls=":", lw=1)
            ax.set_title(f"{arm}: broad misalignment")
            ax.set_xlabel("cycle")
            ax.set_ylim(0, 1)
        axes[0, 0].legend(fontsize=7)
        ax = axes[0, -1]
        ax.plot(m["ts"], m["static"]["broad_misalignment"], "k-o", label="static")
        for arm in arms:
            fm = [s["mean"] for s in m["by_arm"][arm]["final_misalignment"]]
            ax.plot(m["ts"], fm, "-o", label=f"{arm}, after N")
        ax.axhline(m["settings"]["safe_level"], color="gray", ls=":", lw=1)
        ax.set_xlabel("adapter scale t")
        ax.set_title("broad misalignment vs t")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()


def plot_overlap_zone(zone: dict, path) -> None:
    """The share of each genre's prompts inside the overlap zone (routine genres in green)."""
    with _figure(path, figsize=(9, 3.5)) as (_fig, ax):
        genres = list(zone["per_genre"])
        ax.bar(range(len(genres)), [zone["per_genre"][g] for g in genres],
               color=["C2" if g in ("arithmetic", "facts") else "C0" for g in genres])
        ax.set_xticks(range(len(genres)), genres, rotation=60, fontsize=7)
        ax.set_ylabel(f"fraction with TV < {zone['epsilon']:g}")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"behavioural overlap by genre (volume {zone['volume']:.3f}; "
                     f"routine share {zone['routine_share']:.2f})")


def plot_probes(zone: dict, bs: dict, path) -> None:
    """The divergence ranking of composed probes and the power curves of the behavioural test."""
    with _figure(path, 1, 2, figsize=(11, 4)) as (_fig, axes):
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
