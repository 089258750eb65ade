"""LLC figures (matplotlib, PNG, written atomically): SGLD traces, the calibration grid, stage curves, paths
and trajectories. Each function takes measured values and a path and returns the path written."""

from __future__ import annotations

import math
import textwrap
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


def _trace_label(key) -> str:
    """A calibration setting ``(nbeta, step_size[, localization])`` as text; any other key as it is."""
    if not isinstance(key, tuple):
        return str(key)
    label = f"nβ={key[0]:.3g}, ε={key[1]:.1e}"
    return f"{label}, γ={key[2]:g}" if len(key) > 2 else label


def plot_traces(
    traces: dict, path, title: str = "", notes: dict | None = None, ylabels: dict | None = None
) -> Path:
    """``traces``: ``{(nbeta, step_size[, localization]) or label: chains x draws array}`` -> one subplot
    each, one line per chain. ``notes[key]``: the panel's second title line (the checked estimate, or why it
    is withheld); a panel without a note shows no number. ``ylabels[key]``: its y label (default "λ per
    draw")."""
    notes, ylabels = notes or {}, ylabels or {}
    keys = list(traces)
    with _grid(path, len(keys), 4, (3.6, 2.8)) as (fig, axes):
        for ax, k in zip(axes.flat, keys):
            tr = np.asarray(traces[k])
            for c in range(tr.shape[0]):
                ax.plot(tr[c], lw=0.7, label=f"chain {c}")
            note = notes.get(k)
            heading = _trace_label(k) + ("\n" + textwrap.fill(note, 60) if note else "")
            ax.set_title(heading, fontsize=7)
            ax.set_xlabel("draw", fontsize=7)
            ax.set_ylabel(ylabels.get(k, "λ per draw"), fontsize=7)
            ax.tick_params(labelsize=7)
        if keys:
            axes.flat[0].legend(fontsize=6, ncol=min(4, len(traces[keys[0]])))
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return Path(path)


def _estimate_panels(traces: dict, llc: dict) -> tuple[dict, dict]:
    """The trace figure's notes and y labels for one estimate (``metrics["llc"]``): the checked λ̂ or why it
    is withheld on the λ panel; the loss panel gets no number."""
    shown = (
        f"λ̂ = {llc['mean']:.3g} ± {1.96 * llc['mcse']:.2g} (95%, MCSE)"
        if llc.get("converged") and llc.get("mean") is not None
        else "λ̂ withheld: " + ("; ".join(llc.get("reasons") or []) or "the equilibrium gates failed")
    )
    notes, ylabels = {}, {}
    for key in traces:
        is_loss = str(key).startswith("loss")
        ylabels[key] = "minibatch loss" if is_loss else "λ per draw"
        if not is_loss:
            notes[key] = shown
    return notes, ylabels


def _calibration_notes(grid: list[dict]) -> dict:
    """Per calibration setting: its λ̂ where it passed, else what failed (no number)."""
    from ..measure.llc.calibration import setting_label

    notes = {}
    for row in grid:
        # rows of calibrate()'s search carry their chain length and preconditioner: their traces are keyed by
        # the setting's label
        old_key = (row["nbeta"], row["step_size"], row["localization"])
        key = setting_label(row) if "num_draws" in row else old_key
        if row.get("passed") and row.get("llc") is not None:
            notes[key] = f"λ̂ = {row['llc']:.3g} (passed)"
        else:
            failed = "failed: " + "; ".join(row.get("reasons") or [])
            notes[key] = "diverged" if row.get("diverged") else failed
    return notes


def plot_stages(
    steps, curves: dict, stds: dict, critical: dict, n_layers: int, n_heads: int, paths: dict
) -> list[Path]:
    """The LLC over pretraining with stage boundaries (``paths["stages"]``), per-layer (``paths["layers"]``)
    and per-head (``paths["heads"]``) weight-restricted curves, where present; ``critical``: the smoothed
    curve and its critical points (``smoothed``, ``boundaries``, ``kinds``). Returns the paths written."""
    out = []
    with _figure(paths["stages"], figsize=(6, 3.5)) as (_fig, ax):
        y, e = _f(curves["full"]), _f(stds["full"])
        ax.errorbar(steps, y, yerr=1.96 * e, fmt="o-", ms=3, lw=1, label="LLC (± 1.96 MCSE; gaps: withheld)")
        ax.plot(steps, _f(critical["smoothed"]), "k--", lw=1, label="smoothed")
        for b, k in zip(critical["boundaries"], critical["kinds"]):
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
                ax.set_xlabel("pretraining step", fontsize=7)
                ax.tick_params(labelsize=6)
            axes[0, 0].set_ylabel("wrLLC", fontsize=7)
            axes[0, 0].legend(fontsize=6)
            fig.suptitle("per-head weight-restricted LLC", fontsize=9)
        out.append(Path(paths["heads"]))
    return out


def plot_calibration(grid: list[dict], path) -> Path:
    """The calibration grid (devinterp's ε-β analysis): one panel per localisation, step size across, n_beta
    down; each cell shows λ̂ and is green where the setting passed, orange where it failed its gates, red where
    it diverged; the recommended setting is boxed by the caller's choice (``recommended`` flag in the row)."""
    from matplotlib.patches import Rectangle

    # one panel per localisation and preconditioner; a setting run at several chain lengths shows the longest
    panels = sorted({(r["localization"], r.get("precondition") or "") for r in grid})
    grid = [r for r in grid if r.get("stage") != "bias check"] or grid
    grid = sorted(grid, key=lambda r: r.get("num_draws", 0))
    steps = sorted({r["step_size"] for r in grid})
    nbetas = sorted({r["nbeta"] for r in grid})
    with _figure(
        path,
        1,
        len(panels),
        figsize=(1.2 + 1.1 * len(steps) * len(panels), 0.9 + 0.6 * len(nbetas)),
        squeeze=False,
    ) as (fig, axes):
        for ax, (g, pre) in zip(axes[0], panels):
            for r in (r for r in grid if (r["localization"], r.get("precondition") or "") == (g, pre)):
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
            ax.set_xticks(range(len(steps)), [f"{s:.1e}" for s in steps], fontsize=6, rotation=45)
            ax.set_yticks(range(len(nbetas)), [f"{b:.3g}" for b in nbetas], fontsize=7)
            ax.set_xlabel("step size ε", fontsize=8)
            ax.set_title(f"γ = {g:g}" + (f", {pre}" if pre else ""), fontsize=8)
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
                ax2.set_ylabel("broad misalignment", fontsize=7)
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
    band = metrics.get("band")  # the hull of the seeds' bands; None when no seed crosses
    with _figure(path, rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False) as (fig, axes):
        for ax in axes.flat[len(keys) :]:
            ax.axis("off")
        for ax, k in zip(axes.flat, keys):
            if band:
                ax.axvspan(band[0], band[1], color="0.9")
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
            ax.set_ylabel("λ̂ (± 1.96 MCSE)", fontsize=7)
            ax.tick_params(labelsize=6)
        if keys:
            axes.flat[0].legend(fontsize=6)
        fig.suptitle("LLC along w0 + t·ΔW (grey: boundary band; gaps: withheld by the gates)", fontsize=9)
        fig.tight_layout()
    return Path(path)


def draw_llc_figures(result, title: str = "") -> list[Path]:
    """Every figure an LLC study's metrics list (``metrics["figures"]``), drawn into ``result.run_dir /
    "figures"`` from the result's metrics and figure data (a :class:`~persona_basins.results.StudyResult`
    of a ``persona_basins.studies.llc.run_*``). ``title``: the trace figure's. Returns the paths written."""
    from ..studies import llc as study

    folder, metrics, data = Path(result.run_dir) / "figures", result.metrics, result.figure_data
    names = [Path(name).name for name in metrics["figures"]]
    drawn = []
    if study.TRACE_FIGURE in names:
        notes, ylabels = _estimate_panels(data["traces"], metrics["llc"])
        trace_path = folder / study.TRACE_FIGURE
        drawn.append(plot_traces(data["traces"], trace_path, title=title, notes=notes, ylabels=ylabels))
    if study.CALIBRATION_GRID_FIGURE in names:
        drawn.append(plot_calibration(metrics["grid"], folder / study.CALIBRATION_GRID_FIGURE))
        traces_path = folder / study.CALIBRATION_FIGURE
        notes = _calibration_notes(metrics["grid"])
        drawn.append(plot_traces(data["traces"], traces_path, title="LLC calibration traces", notes=notes))
    if study.STAGE_FIGURES["stages"] in names:
        paths = {key: folder / name for key, name in study.STAGE_FIGURES.items()}
        drawn += plot_stages(**data, paths=paths)
    if study.TRAJECTORY_FIGURE in names:
        drawn.append(plot_trajectory(metrics, folder / study.TRAJECTORY_FIGURE))
    if study.PATH_FIGURE in names:
        drawn.append(plot_path(metrics, folder / study.PATH_FIGURE))
    return drawn
