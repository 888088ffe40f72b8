"""PNG plots of a run, drawn from its files alone (recipe.yaml, train_log.jsonl, predictions.jsonl), so
`llmtune report` can draw them again for any finished run.

    loss.png      training loss and validation loss against optimizer steps
    metric.png    the main validation metric against steps
    ...           the task's own plots of the predictions (classification: confusion_matrix.png)
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import tasks
from ..common import figures, runs
from ..recipe import Recipe, load_recipe

LOSS_PNG, METRIC_PNG = "loss.png", "metric.png"
# Validation entries name their loss differently per task; the first one present is plotted with the training loss.
VALIDATION_LOSS_KEYS = ("loss", "cross_entropy")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def predictions_split(recipe: Recipe) -> str:
    """predictions.jsonl holds the test split when the recipe has one, else validation."""
    return "test" if recipe.data.test is not None else "validation"


def render(run_dir: str | Path) -> dict[str, bytes]:
    """The run's plots as PNG bytes by file name; plots whose data the run lacks are left out."""
    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / runs.RECIPE_FILE)
    log = read_jsonl(run_dir / runs.LOG_FILE)
    train_entries = [e for e in log if "split" not in e and "loss" in e]
    validation = [e for e in log if e.get("split") == "validation"]
    images = {}
    if train_entries:
        images[LOSS_PNG] = _loss_plot(train_entries, validation)
    metric = recipe.metrics[0]
    points = [e for e in validation if metric in e]
    if points:
        figure, axes = figures.new_figure()
        axes.plot([e["step"] for e in points], [e[metric] for e in points], marker="o", color="tab:green")
        axes.set(xlabel="optimizer step", ylabel=metric, title=f"Validation {metric}")
        axes.grid(alpha=0.3)
        images[METRIC_PNG] = figures.to_png(figure)
    predictions = read_jsonl(run_dir / runs.PREDICTIONS_FILE)
    if predictions:
        images.update(tasks.create(recipe.task).plots(predictions, predictions_split(recipe)))
    return images


def _loss_plot(train_entries: list[dict], validation: list[dict]) -> bytes:
    figure, axes = figures.new_figure()
    axes.plot([e["step"] for e in train_entries], [e["loss"] for e in train_entries], marker=".", label="training loss")
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
    return figures.to_png(figure)


def save_plots(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots and write them into the run directory as PNG files."""
    written = []
    for name, png in render(run_dir).items():
        path = Path(run_dir) / name
        runs.write_atomic_bytes(path, png)
        written.append(path)
    return written
