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


RELIABILITY_PNG = "reliability.png"


def reliability(bins: list[tuple[float, float, int]], title: str) -> bytes:
    """A reliability diagram: each confidence bin's accuracy as a bar against the diagonal (perfect calibration),
    the gap to it shaded, and how many examples the bin holds under its bar."""
    figure, axes = new_figure(5.5, 5.0)
    width = 1 / len(bins)
    centres = [(i + 0.5) * width for i in range(len(bins))]
    filled = [(x, confidence, accuracy, count) for x, (confidence, accuracy, count) in zip(centres, bins) if count]
    axes.bar([f[0] for f in filled], [f[2] for f in filled], width=width, edgecolor="black", label="accuracy")
    axes.bar(
        [f[0] for f in filled],
        [f[1] - f[2] for f in filled],
        bottom=[f[2] for f in filled],
        width=width,
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
    for x, _, _, count in filled:
        axes.text(x, 0.01, str(count), ha="center", va="bottom", fontsize=6, rotation=90)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy", title=title)
    axes.legend(loc="upper left")
    return to_png(figure)


def scatter(xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str) -> bytes:
    """One point per (x, y) pair, with the diagonal y = x: how far predictions fall from their references."""
    figure, axes = new_figure(5.0, 5.0)
    axes.scatter(xs, ys, s=8, alpha=0.5)
    low, high = min(min(xs), min(ys)), max(max(xs), max(ys))
    axes.plot([low, high], [low, high], color="grey", linewidth=1)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return to_png(figure)
