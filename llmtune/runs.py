"""The run directory: what a finished run holds, and how it is written and read back.

    recipe.yaml         the resolved recipe (label names, absolute data paths)
    config.json, model.safetensors          full fine-tuning: a plain transformers model
    adapter_config.json, adapter_model.safetensors   adapter methods: a plain peft adapter (+ task head)
    tokenizer files
    train_log.jsonl     one JSON object per logged step and per evaluation
    checkpoints/step-N  resumable training checkpoints (see checkpoints.py)
    predictions.jsonl   the final evaluation's predictions, one per example
    loss.png, metric.png, confusion_matrix.png   plots of the log and the predictions (llmtune.plots)
    tensorboard/        TensorBoard event files, when the recipe's tracking asks for them
    metrics.json        per split metrics; written last, so its presence marks a finished run
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
# Keys of a split's metrics (and log entries) that describe the evaluation rather than measure the model.
NOT_METRICS = ("step", "split", "epoch", "num_examples", "num_windows", "num_target_tokens", "runtime_s")
LOG_FILE = "train_log.jsonl"
PREDICTIONS_FILE = "predictions.jsonl"
ADAPTER_CONFIG = "adapter_config.json"


def is_finished_run(path: Path) -> bool:
    return (path / RECIPE_FILE).is_file() and (path / METRICS_FILE).is_file()


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that holds anything, unless overwrite was asked for."""
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        what = "a finished run" if is_finished_run(path) else "files (an unfinished run?)"
        raise UserError(
            f"output_dir: {path} already holds {what}; pass --overwrite to replace it, "
            "or choose another directory with --output DIR"
        )


def clear_output_dir(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def reopen_run(path: Path, step: int) -> None:
    """A resumed run is unfinished again until it writes metrics.json; log lines written after the
    checkpoint's step, and the final test evaluation of a run being extended, are dropped: the resumed run writes them again."""
    (path / METRICS_FILE).unlink(missing_ok=True)
    log = path / LOG_FILE
    if log.is_file():
        entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [json.dumps(entry) + "\n" for entry in entries if entry["step"] <= step and entry.get("split") != "test"]
        write_atomic(log, "".join(kept))


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
