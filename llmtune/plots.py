"""PNG plots of a run, drawn from its files alone (train_log.jsonl, predictions.jsonl, recipe.yaml),
so `llmtune report` can draw them again for any finished run.

    loss.png              training loss and validation loss against optimizer steps
    metric.png            the main validation metric against steps
    confusion_matrix.png  classification: gold against predicted labels on the test split
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from . import runs

LOSS_PNG, METRIC_PNG, CONFUSION_PNG = "loss.png", "metric.png", "confusion_matrix.png"
# Keys of log entries and metrics that are bookkeeping, not metrics.
NOT_METRICS = runs.NOT_METRICS
# Validation entries name their loss differently per task; the first one present is plotted with the training loss.
VALIDATION_LOSS_KEYS = ("loss", "cross_entropy")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_recipe(run_dir: Path) -> dict:
    """The run's resolved recipe as plain YAML data (not validated: any task's run can be plotted)."""
    path = run_dir / runs.RECIPE_FILE
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main_metric(recipe: dict, validation_entries: list[dict]) -> str | None:
    """The recipe's first listed metric, else the first metric the validation log holds that is not a loss."""
    listed = (recipe.get("evaluation") or {}).get("metrics")
    if listed:
        return listed[0]
    for entry in validation_entries:
        for key in entry:
            if key not in NOT_METRICS and key not in VALIDATION_LOSS_KEYS:
                return key
    return None


def predictions_split(recipe: dict) -> str:
    """predictions.jsonl holds the test split when the recipe has one, else validation."""
    return "test" if (recipe.get("data") or {}).get("test") else "validation"


def render(run_dir: str | Path) -> dict[str, bytes]:
    """The run's plots as PNG bytes by file name; plots whose data the run lacks are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    recipe = read_recipe(run_dir)
    log = read_jsonl(run_dir / runs.LOG_FILE)
    train_entries = [e for e in log if "split" not in e and "loss" in e]
    validation = [e for e in log if e.get("split") == "validation"]
    images = {}

    if train_entries:
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.plot(
            [e["step"] for e in train_entries], [e["loss"] for e in train_entries], marker=".", label="training loss"
        )
        loss_key = next((k for k in VALIDATION_LOSS_KEYS if validation and k in validation[0]), None)
        if loss_key:
            axes.plot(
                [e["step"] for e in validation],
                [e[loss_key] for e in validation],
                marker="o",
                label=f"validation {loss_key}",
            )
        axes.set(xlabel="optimizer step", ylabel="loss", title="Loss")
        axes.grid(alpha=0.3)
        axes.legend()
        images[LOSS_PNG] = _png(figure)

    metric = main_metric(recipe, validation)
    points = [e for e in validation if metric in e]
    if points:
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.plot([e["step"] for e in points], [e[metric] for e in points], marker="o", color="tab:green")
        axes.set(xlabel="optimizer step", ylabel=metric, title=f"Validation {metric}")
        axes.grid(alpha=0.3)
        images[METRIC_PNG] = _png(figure)

    predictions = read_jsonl(run_dir / runs.PREDICTIONS_FILE)
    if (recipe.get("task") or {}).get("type") == "classification" and predictions and "label" in predictions[0]:
        images[CONFUSION_PNG] = _confusion_matrix(plt, predictions, recipe, predictions_split(recipe))
    return images


def save_plots(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots and write them into the run directory as PNG files."""
    written = []
    for name, png in render(run_dir).items():
        path = Path(run_dir) / name
        runs.write_atomic_bytes(path, png)
        written.append(path)
    return written


def confusion_counts(predictions: list[dict], names: list[str]) -> list[list[int]]:
    """counts[gold][predicted] over label names."""
    index = {name: i for i, name in enumerate(names)}
    counts = [[0] * len(names) for _ in names]
    for row in predictions:
        counts[index[row["label"]]][index[row["predicted"]]] += 1
    return counts


def _confusion_matrix(plt, predictions: list[dict], recipe: dict, split: str) -> bytes:
    names = (recipe.get("task") or {}).get("label_names") or sorted(
        {r["label"] for r in predictions} | {r["predicted"] for r in predictions}
    )
    counts = confusion_counts(predictions, names)
    size = max(4.0, 0.6 * len(names) + 2.5)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set(xlabel="predicted", ylabel="gold", title=f"Confusion matrix ({split}, n={len(predictions)})")
    threshold = max(max(row) for row in counts) / 2
    for gold, row in enumerate(counts):
        for predicted, count in enumerate(row):
            axes.text(
                predicted, gold, str(count), ha="center", va="center", color="white" if count > threshold else "black"
            )
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _png(figure)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
