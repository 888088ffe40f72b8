"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through Accelerate's trackers.

The JSONL log in the run directory is always written; trackers are extra copies of the same entries.
"""

from __future__ import annotations

import importlib.util
import resource
import sys

import torch

from ..common import runs
from ..common.errors import UserError

# recipe name -> (module that must be importable, pip package that provides it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
# Where TensorBoard event files go, inside the run directory.
TENSORBOARD_DIR = runs.TENSORBOARD_DIR


def check_installed(trackers: list[str]) -> None:
    """Fail before training, not after the first logged step, when a tracker's package is missing.

    Raises:
        UserError: a requested tracker's package is not installed.
    """
    for name in trackers:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"tracking: '{name}' needs the '{package}' package, which is not installed; "
                f"pip install {package}, or remove '{name}' from tracking"
            )


def accelerator_options(trackers: list[str], run_dir) -> dict:
    """Keyword arguments for `Accelerator(...)`: TensorBoard writes under the run directory."""
    if not trackers:
        return {}
    return {"log_with": list(trackers), "project_dir": str(run_dir)}


def start(accelerator, recipe_values: dict) -> None:
    """Open the trackers' runs and record the resolved recipe as hyper-parameters."""
    if accelerator.log_with:
        accelerator.init_trackers(TENSORBOARD_DIR, config=hyperparameters(recipe_values))


def finish(accelerator) -> None:
    """Close the trackers' runs (flushes TensorBoard event files)."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()


def hyperparameters(values: dict, prefix: str = "") -> dict:
    """The nested recipe as flat `section.key` values of the types every tracker accepts."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # lists and nulls: TensorBoard's hparams take only scalars and strings
            flat[name] = str(value)
    return flat


def scalars(entry: dict) -> dict:
    """A train_log.jsonl entry as tracker scalars: `train/loss`, `validation/accuracy`, ..."""
    split = entry.get("split", "train")
    return {
        f"{split}/{key}": value
        for key, value in entry.items()
        if key not in ("step", "split", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def peak_memory() -> dict[str, float]:
    """The process's peak resident memory (host RAM), and on a GPU also the peak memory its tensors took there."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    figures = {"peak_memory_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if torch.cuda.is_available():
        figures["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures
