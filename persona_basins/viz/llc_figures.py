"""LLC figures (matplotlib, PNG, written atomically): SGLD traces, the calibration grid, stage curves, paths
and trajectories. Each function takes measured values and a path and returns the path written."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .figures import figure as _figure


def _f(values) -> np.ndarray:
    """Floats with NaN for withheld (None) values, which matplotlib leaves as gaps."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


@contextmanager
def _grid(path, n: int, max_cols: int, size: tuple[float, float]):
    """``n`` panels in rows of at most ``max_cols`` (unused panels hidden), each ``size`` inches."""
    cols = min(max_cols, max(1, n))
    rows = max(1, math.ceil(n / cols))
    with _figure(path, rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False) as (fig, axes):
        for ax in axes.flat[n:]:
            ax.axis("off")
        yield fig, axes


def plot_traces(traces: dict, path, title: str = "") -> Path:
    """``traces``: ``{(nbeta, step_size) or label: chains x draws array}`` -> one subplot each."""
    keys = list(traces)
    with _grid(path, len(keys), 4, (3.6, 2.6)) as (fig, axes):
        for ax, k in zip(axes.flat, keys):
            tr = np.asarray(traces[k])
            for c in range(tr.shape[0]):
                ax.plot(tr[c], lw=0.7)
            ax.axhline(tr.mean(), color="k", lw=0.8, ls="--")
            label = f"nβ={k[0]:.3g}, ε={k[1]:.1e}" if isinstance(k, tuple) else str(k)
            ax.set_title(f"{label}\nλ̂={tr.mean():.3g}", fontsize=8)
            ax.set_xlabel("draw", fontsize=7)
            ax.tick_params(labelsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return Path(path)


def plot_stages(
    steps, curves: dict, stds: dict, cp: dict, n_layers: int, n_heads: int, paths: dict
) -> list[Path]:
    """The LLC over pretraining with stage boundaries (``paths["stages"]``), per-layer (``paths["layers"]``)
    and per-head (``paths["heads"]``) weight-restricted curves, where present. Returns the paths written."""
    out = []
    with _figure(paths["stages"], figsize=(6, 3.5)) as (_fig, ax):
        y, e = _f(curves["full"]), _f(stds["full"])
        ax.errorbar(steps, y, yerr=1.96 * e, fmt="o-", ms=3, lw=1, label="LLC (± 1.96 MCSE; gaps: withheld)")
        ax.plot(steps, _f(cp["smoothed"]), "k--", lw=1, label="smoothed")
        for b, k in zip(cp["boundaries"], cp["kinds"]):
            ax.axvline(b, color="tab:red" if k == "max" else "tab:green", lw=0.8, ls=":")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("λ̂")
        ax.set_title("LLC over pretraining; dotted: stage boundaries", fontsize=9)
        ax.legend(fontsize=7)
    out.append(Path(paths["stages"]))
    layers = [k for k in curves if k.startswith("layer:") and "/head:" not in k]
    if layers:
        with _figure(paths["layers"], figsize=(6, 3.5)) as (_fig, ax):
            for k in layers:
                ax.plot(steps, _f(curves[k]), "o-", ms=2, lw=1, label=k)
            ax.set_xlabel("pretraining step")
            ax.set_ylabel("wrLLC")
            ax.set_title("per-layer weight-restricted LLC", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
        out.append(Path(paths["layers"]))
    heads = [k for k in curves if "/head:" in k]
    if heads:
        with _figure(paths["heads"], 1, n_layers, figsize=(3 * n_layers, 3), squeeze=False) as (fig, axes):
            for i in range(n_layers):
                ax = axes[0, i]
                for h in range(n_heads):
                    k = f"layer:{i}/head:{h}"
                    if k in curves:
                        ax.plot(steps, _f(curves[k]), lw=1, label=f"head {h}")
                ax.set_title(f"layer {i}", fontsize=8)
                ax.tick_params(labelsize=6)
            axes[0, 0].legend(fontsize=6)
            fig.suptitle("per-head weight-restricted LLC", fontsize=9)
        out.append(Path(paths["heads"]))
    return out


def plot_calibration(grid: list[dict], path) -> Path:
    """The calibration grid (devinterp's ε-β analysis): one panel per localisation, step size across, n_beta
    down; each cell shows λ̂ and is green where the setting passed, orange where it failed its gates, red where
    it diverged; the recommended setting is boxed by the caller's choice (``recommended`` flag in the row)."""
    from matplotlib.patches import Rectangle

    gammas = sorted({r["localization"] for r in grid})
    steps = sorted({r["step_size"] for r in grid})
    nbetas = sorted({r["nbeta"] for r in grid})
    with _figure(
        path,
        1,
        len(gammas),
        figsize=(1.2 + 1.1 * len(steps) * len(gammas), 0.9 + 0.6 * len(nbetas)),
        squeeze=False,
    ) as (fig, axes):
        for ax, g in zip(axes[0], gammas):
            for r in (r for r in grid if r["localization"] == g):
                i, j = nbetas.index(r["nbeta"]), steps.index(r["step_size"])
                color = "#d62728" if r.get("diverged") else ("#2ca02c" if r.get("passed") else "#ff7f0e")
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color=color, alpha=0.5))
                txt = "div." if r.get("diverged") else f"{r['llc']:.3g}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold" if r.get("recommended") else "normal",
                )
            ax.set_xlim(-0.5, len(steps) - 0.5)
            ax.set_ylim(-0.5, len(nbetas) - 0.5)
            ax.set_xticks(range(len(steps)), [f"{s:.0e}" for s in steps], fontsize=7)
            ax.set_yticks(range(len(nbetas)), [f"{b:.3g}" for b in nbetas], fontsize=7)
            ax.set_xlabel("step size ε", fontsize=8)
            ax.set_title(f"γ = {g:g}", fontsize=8)
        axes[0, 0].set_ylabel("nβ", fontsize=8)
        fig.suptitle(
            "LLC calibration: green passed, orange failed gates, red diverged (bold: recommended)", fontsize=8
        )
        fig.tight_layout()
    return Path(path)


def plot_trajectory(metrics: dict, path) -> Path:
    """Per fine-tune (condition/seed): the adapter- and layer-restricted LLC (± 1.96 MCSE; gaps: withheld)
    over the saved checkpoints, and broad misalignment on a second axis."""
    units = metrics["units"]
    keys = list(units)
    with _grid(path, len(keys), 3, (4.2, 3.0)) as (fig, axes):
        for ax, k in zip(axes.flat, keys):
            u = units[k]
            for name, c in (("adapter", "C0"), ("layer", "C2")):
                y, e = _f(u[name]["llc"]), _f(u[name]["mcse"])
                ax.errorbar(
                    u["steps"], y, yerr=1.96 * e, fmt="o-", ms=3, lw=1, c=c, label=f"λ̂ {u[name]['restrict']}"
                )
            ax.set_xlabel("fine-tuning step", fontsize=7)
            ax.set_ylabel("λ̂ (self-KL)", fontsize=7)
            b = u["behaviour"]
            if b["steps"]:
                ax2 = ax.twinx()
                ax2.plot(b["steps"], b["broad_misalignment"], "k--", lw=1, label="broad misalignment")
                ax2.set_ylim(0, 1)
                ax2.tick_params(labelsize=6)
            ax.set_title(k, fontsize=8)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6, loc="upper left")
        fig.suptitle("LLC over the EM fine-tune (dashed: broad misalignment, right axis)", fontsize=9)
        fig.tight_layout()
    return Path(path)


def plot_path(metrics: dict, path) -> Path:
    """λ̂(t) per seed for each direction / restriction / loss (gaps: withheld), the boundary band shaded, the
    verdict in each title."""
    keys = list(metrics["curves"])
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    lo, hi = metrics["band"]
    with _figure(path, rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False) as (fig, axes):
        for ax in axes.flat[len(keys) :]:
            ax.axis("off")
        for ax, k in zip(axes.flat, keys):
            ax.axvspan(lo, hi, color="0.9")
            for p in metrics["curves"][k]:
                ax.errorbar(
                    metrics["ts"],
                    _f(p["llc"]),
                    yerr=1.96 * _f(p["mcse"]),
                    fmt="o-",
                    ms=3,
                    lw=1,
                    label=f"seed {p['seed']}",
                )
            v = metrics["verdicts"].get(k) or {}
            ax.set_title(f"{k}\n{v.get('verdict', '')} ({v.get('supports', '')} support)", fontsize=7)
            ax.set_xlabel("t", fontsize=7)
            ax.tick_params(labelsize=6)
        fig.suptitle("LLC along w0 + t·ΔW (grey: boundary band; gaps: withheld by the gates)", fontsize=9)
        fig.tight_layout()
    return Path(path)
