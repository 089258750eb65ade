"""The sweep heatmap: one metric over two axes of a sweep, each cell annotated with its mean and n."""

from __future__ import annotations


def heatmap(data: dict):
    """A matplotlib figure from :func:`persona_basins.studies.sweep.record.heatmap_data`; empty cells grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = np.array([[np.nan if v is None else v for v in row] for row in data["mean"]], dtype=float)
    n_rows, n_cols = mean.shape
    fig, axes = plt.subplots(figsize=(1.6 + 1.25 * n_cols, 1.2 + 0.7 * n_rows))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    finite = mean[np.isfinite(mean)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = axes.imshow(
        np.ma.masked_invalid(mean),
        cmap=cmap,
        vmin=low,
        vmax=high if high > low else low + 1e-12,
        aspect="auto",
    )
    for i in range(n_rows):
        for j in range(n_cols):
            count = data["n"][i][j]
            if count:
                value = mean[i, j]
                dark = (value - low) / (high - low) < 0.5 if high > low else True  # white text on dark cells
                axes.text(
                    j,
                    i,
                    f"{value:.3f}\nn={count}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    axes.set_xticks(range(n_cols), [str(v) for v in data["x_values"]], rotation=30 if n_cols > 4 else 0)
    axes.set_yticks(range(n_rows), [str(v) for v in data["y_values"]])
    axes.set_xlabel(data["x"])
    axes.set_ylabel(data["y"])
    pooled = f"; mean over {', '.join(data['pooled_over'])}" if data["pooled_over"] else ""
    axes.set_title(f"{data['name']}: {data['metric']}{pooled}", fontsize=10)
    fig.colorbar(image, ax=axes, label=data["metric"])
    fig.tight_layout()
    return fig
