"""`llmtune calibrate`: temperature scaling for a finished run, fitted on its validation split.

The same fit as a recipe's `task.calibrate: true` (the task's `tune`), for a run trained without it: the run's
recipe gains `task.temperature`, so every later load (eval, predict, serve, export) applies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import tasks
from ..common import runs
from ..common.errors import UserError
from ..recipe import dump_recipe, load_recipe
from ..tasks.calibration import TemperatureScaled

CALIBRATION_KEY = "calibration"


@dataclass
class Calibration:
    temperature: float
    previous: float  # the temperature the run had (1: none)
    ece: dict[str, tuple[float, float]] = field(default_factory=dict)  # split: (before, after)
    accuracy: dict[str, tuple[float, float]] = field(default_factory=dict)  # split: (before, after), unchanged


def calibrate_run(run_dir: str | Path, echo=None) -> Calibration:
    """Fit the temperature on the run's validation split, write it into the run's recipe.yaml (atomically), and
    score validation and test before and after. metrics.json gains a `calibration` entry and the splits' metrics
    (and predictions.jsonl) are replaced by the calibrated ones.

    Raises:
        UserError: not a finished run, a task without class probabilities, or no validation split.
    """
    from ..inference.evaluation import evaluate

    echo = echo or (lambda line: None)
    run_dir = Path(run_dir)
    runs.require_finished_run(run_dir)
    recipe = load_recipe(run_dir / runs.RECIPE_FILE)
    task = tasks.create(recipe.task)
    if not isinstance(task, TemperatureScaled):
        raise UserError(f"{run_dir}: a {recipe.task.type} run has no class probabilities to temperature-scale")
    if recipe.data.validation is None:
        raise UserError(f"{run_dir}: the run's recipe has no data.validation; the temperature is fitted on it")
    splits = [split for split in ("validation", "test") if getattr(recipe.data, split) is not None]
    before = {}
    for split in splits:
        echo(f"scoring {split} with the current temperature")
        before[split] = evaluate(run_dir, split=split)
    previous = task.temperature()
    temperature = round(task.fitted_temperature(before["validation"][1]), 6)
    calibrated = recipe.model_copy(update={"task": recipe.task.model_copy(update={"temperature": temperature})})
    runs.write_atomic(run_dir / runs.RECIPE_FILE, dump_recipe(calibrated))
    after = {}
    for split in splits:
        echo(f"scoring {split} with temperature {temperature:.4f}")
        after[split] = evaluate(run_dir, split=split)
    result = Calibration(temperature, previous)
    for split in splits:
        result.ece[split] = (before[split][0]["ece"], after[split][0]["ece"])
        result.accuracy[split] = (before[split][0].get("accuracy"), after[split][0].get("accuracy"))
    record(run_dir, recipe, result, {split: after[split][0] for split in splits}, after[splits[-1]][1])
    return result


def record(run_dir: Path, recipe, result: Calibration, metrics_after: dict, predictions: list[dict]) -> None:
    """metrics.json's splits take the calibrated metrics (timings and counts stay the training run's), validation a
    `calibration` entry; predictions.jsonl (test, else validation) takes the calibrated rows, so the report's
    reliability diagram and sample predictions show what eval and predict now give."""
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text(encoding="utf-8"))
    for split, values in metrics_after.items():
        metrics.setdefault(split, {}).update({k: v for k, v in values.items() if runs.is_metric(k)})
    # Under the split it was fitted on, as a mapping: tables, cards and compare read a split's numbers only.
    metrics["validation"][CALIBRATION_KEY] = {
        "temperature": result.temperature,
        "previous_temperature": result.previous,
        **{f"{split}_ece_before": before for split, (before, _) in result.ece.items()},
    }
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    runs.write_jsonl(run_dir / runs.PREDICTIONS_FILE, predictions)
