"""The sweep heatmap: one metric over two axes of a sweep, each cell annotated with its mean and seed count."""

from __future__ import annotations


def heatmap(data: dict):
    """A matplotlib figure from :func:`persona_basins.studies.sweep.heatmap_data`; empty cells are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = np.array([[np.nan if v is None else v for v in row] for row in data["mean"]], dtype=float)
    ny, nx = mean.shape
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * nx, 1.2 + 0.7 * ny))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    finite = mean[np.isfinite(mean)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    im = ax.imshow(
        np.ma.masked_invalid(mean), cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-12, aspect="auto"
    )
    for i in range(ny):
        for j in range(nx):
            n = data["n"][i][j]
            if n:
                v = mean[i, j]
                dark = (v - lo) / (hi - lo) < 0.5 if hi > lo else True
                ax.text(
                    j,
                    i,
                    f"{v:.3f}\nn={n}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(nx), [str(v) for v in data["x_values"]], rotation=30 if nx > 4 else 0)
    ax.set_yticks(range(ny), [str(v) for v in data["y_values"]])
    ax.set_xlabel(data["x"])
    ax.set_ylabel(data["y"])
    pooled = f"; mean over {', '.join(data['pooled_over'])}" if data["pooled_over"] else ""
    ax.set_title(f"{data['name']}: {data['metric']}{pooled}", fontsize=10)
    fig.colorbar(im, ax=ax, label=data["metric"])
    fig.tight_layout()
    return fig
