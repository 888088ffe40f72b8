"""Drawing PNG figures without a display: what the run plots (`plots.py`) and the tasks' own plots share."""

from __future__ import annotations

import io


def new_figure(width: float = 7.0, height: float = 4.0):
    """(figure, axes) on matplotlib's non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def to_png(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def heatmap(counts: list[list[int]], names: list[str], xlabel: str, ylabel: str, title: str) -> bytes:
    """A matrix of counts with both axes labelled by `names` and each cell's count written in it."""
    size = max(4.0, 0.6 * len(names) + 2.5)
    figure, axes = new_figure(size, size)
    image = axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    threshold = max(max(row) for row in counts) / 2
    for y, row in enumerate(counts):
        for x, count in enumerate(row):
            axes.text(x, y, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return to_png(figure)


def scatter(xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str) -> bytes:
    """One point per (x, y) pair, with the diagonal y = x: how far predictions fall from their references."""
    figure, axes = new_figure(5.0, 5.0)
    axes.scatter(xs, ys, s=8, alpha=0.5)
    low, high = min(min(xs), min(ys)), max(max(xs), max(ys))
    axes.plot([low, high], [low, high], color="grey", linewidth=1)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return to_png(figure)
