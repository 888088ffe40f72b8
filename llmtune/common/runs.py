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

import contextlib
import errno
import fnmatch
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from .errors import UserError

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
# Keys of a split's metrics (and log entries) that describe the evaluation rather than measure the model;
# so do counts, whose names start with "num_" (num_examples, num_windows, ...).
NOT_METRICS = ("step", "split", "epoch", "runtime_s")
# metrics.json entries that are neither a split's metrics nor the training summary: audits of the data.
AUDIT_ENTRIES = ("leakage",)


def is_metric(key: str) -> bool:
    """Whether a key of a split's metrics measures the model (not a count, a timing or bookkeeping)."""
    return key not in NOT_METRICS and not key.startswith("num_")


LOG_FILE = "train_log.jsonl"
PREDICTIONS_FILE = "predictions.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

# The model, adapter and tokenizer files a run saves (transformers / peft names), also what `llmtune push` uploads.
MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
]
ADAPTER_FILES = [ADAPTER_CONFIG, "adapter_model.safetensors"]
# *.spm and target_vocab.json: Marian (OPUS-MT) tokenizers keep their sentencepiece models there,
# with no tokenizer.json.
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "target_vocab.json",
    "merges.txt",
    "*.model",
    "*.spm",
    "chat_template.jinja",
]
# Everything llmtune writes into a run directory (train, report, plots; peft writes an adapter README.md).
# `--overwrite` replaces a directory only when it holds nothing else.
RUN_ENTRIES = [
    RECIPE_FILE,
    METRICS_FILE,
    LOG_FILE,
    PREDICTIONS_FILE,
    CHECKPOINTS_DIR,
    TENSORBOARD_DIR,
    "README.md",
    "report.html",
    "report.md",
    "*.png",
    "label_issues.csv",  # llmtune audit
    "audit-folds",
    *MODEL_FILES,
    *ADAPTER_FILES,
    *TOKENIZER_FILES,
]


def is_finished_run(path: Path) -> bool:
    return (path / RECIPE_FILE).is_file() and (path / METRICS_FILE).is_file()


def require_finished_run(path: Path) -> None:
    """Raises UserError unless `path` is a finished run directory (its recipe.yaml and metrics.json are there)."""
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    if not is_finished_run(path):
        missing = RECIPE_FILE if not (path / RECIPE_FILE).is_file() else METRICS_FILE
        raise UserError(f"{path}: not a finished llmtune run (no {missing}); train it to the end first")


def foreign_entries(path: Path, entries: list[str] = RUN_ENTRIES) -> list[str]:
    """Names in a directory that llmtune does not write into a run (or into the output `entries` describes), sorted.

    Symbolic links count as foreign, whatever their name: deleting through one could reach anything.
    """

    def ours(entry: Path) -> bool:
        name = entry.name
        if entry.is_symlink():
            return False
        if any(fnmatch.fnmatch(name, pattern) for pattern in entries):
            return True
        # Temporary files of an interrupted atomic write (`.metrics.json.x1y2`) and of checkpoints (`.tmp-step-N`).
        return name.startswith(".") and any(name[1:].startswith(known.split("*")[0]) for known in entries)

    return sorted(entry.name for entry in path.iterdir() if not ours(entry))


# The kinds of llmtune output a directory can hold. Each command with `--overwrite` replaces only its own kind.
TRAINING_RUN, EXPORT, MERGED_MODEL, SWEEP = "training run", "ONNX export", "merged model", "sweep"
# Which command writes each kind, to name it in refusals.
KIND_COMMANDS = {
    TRAINING_RUN: "llmtune train",
    EXPORT: "llmtune export",
    MERGED_MODEL: "llmtune merge",
    SWEEP: "llmtune sweep",
}
ONNX_FILES = ("model_quantized.onnx", "model.onnx")  # an export's weights: the quantized file when there is one
SWEEP_FILE = "sweep.json"
# Adapter methods: a merged model is one of their runs folded into its base weights (no adapter files left).
MERGEABLE_METHODS = ("lora", "ia3")


def kind_entries(kind: str) -> list[str]:
    """The names llmtune writes into an output of this kind (an export adds its ONNX files to a run's)."""
    return [*RUN_ENTRIES, *ONNX_FILES] if kind == EXPORT else RUN_ENTRIES


def output_kind(path: Path) -> str | None:
    """What kind of llmtune output a directory holds (TRAINING_RUN, EXPORT, MERGED_MODEL or SWEEP), judged by the
    files each command writes; None when it holds no llmtune recipe.yaml (empty, a user's folder, a plain
    checkpoint, another tool's recipe.yaml). Whether it holds other files as well is foreign_entries' question."""
    if (path / SWEEP_FILE).is_file() or (path / "study.db").is_file():
        return SWEEP
    recipe = path / RECIPE_FILE
    if not recipe.is_file() or recipe.is_symlink():
        return None
    try:
        raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or not {"model", "task", "data"} <= set(raw):
        return None
    if any((path / name).is_file() for name in ONNX_FILES):
        return EXPORT
    method = raw.get("method")
    adapter_method = isinstance(method, dict) and method.get("type") in MERGEABLE_METHODS
    weights = any(fnmatch.fnmatch(entry.name, "model*.safetensors") for entry in path.iterdir())
    if adapter_method and weights and not (path / ADAPTER_CONFIG).exists():
        return MERGED_MODEL  # an adapter run always keeps its adapter; only merge leaves the folded weights
    return TRAINING_RUN


def is_run_dir(path: Path, kind: str = TRAINING_RUN) -> bool:
    """A directory llmtune may replace with a new output of `kind`: it holds an output of that kind and nothing
    llmtune does not write into one."""
    return output_kind(path) == kind and not foreign_entries(path, kind_entries(kind))


def check_output_dir(path: Path, overwrite: bool, kind: str = TRAINING_RUN, option: str = "output_dir") -> None:
    """Refuse a directory that holds anything, unless it holds llmtune output of `kind` and overwrite was asked for.

    Each command replaces only its own kind of output: `train` a training run, `export` an export, `merge` a
    merged model. A directory with any file llmtune does not write (a user's notes, data, a plain checkpoint
    without a run's recipe.yaml), or with another kind of llmtune output, is refused with or without `overwrite`.

    Raises:
        UserError: naming what the directory holds and what to do instead.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"{option}: {path} exists and is not a directory; choose another directory with --output DIR")
    check_writable(path, option)
    if not path.is_dir() or not any(path.iterdir()):
        return
    found = output_kind(path)
    if found is not None and found != kind:
        raise UserError(
            f"{option}: {path} holds {with_article(found)} ({KIND_COMMANDS[found]}), not {with_article(kind)}; "
            f"{KIND_COMMANDS[kind]} replaces only its own {kind}s, so choose another directory with --output DIR"
        )
    foreign = foreign_entries(path, kind_entries(kind))
    if found is None or foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        noun = "run" if kind == TRAINING_RUN else kind
        what = (
            f"files that are not part of an llmtune {noun} ({shown})"
            if foreign
            else f"files but no llmtune {RECIPE_FILE}"
        )
        raise UserError(
            f"{option}: {path} already holds {what}; llmtune writes only into an empty directory or replaces its "
            "own output, so choose another directory with --output DIR"
        )
    if not overwrite:
        what = (
            with_article(kind)
            if kind != TRAINING_RUN
            else ("a finished run" if is_finished_run(path) else "an unfinished run")
        )
        raise UserError(
            f"{option}: {path} already holds {what}; "
            "pass --overwrite to replace it, or choose another directory with --output DIR"
        )


def with_article(kind: str) -> str:
    return ("an " if kind[0] in "aeiouAEIOU" else "a ") + kind


def check_writable(path: Path, key: str) -> None:
    """Fail now, not after training, when the directory (or the nearest one above it that exists) takes no files.

    Raises:
        UserError: naming the directory and why (read-only file system, permission denied).
    """
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".llmtune-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(
            f"{key}: cannot write in {existing} ({error.strerror.lower()}); choose another directory with --output DIR"
        ) from None


def check_output_file(path: Path, option: str) -> None:
    """A file llmtune is asked to write must be a file name in a directory that exists.

    Raises:
        UserError: the directory does not exist, or the path is a directory.
    """
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory; expected a file name")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: the directory {path.parent} does not exist")


def clear_output_dir(path: Path, kind: str = TRAINING_RUN) -> None:
    """Empty a directory of llmtune output of `kind` (check_output_dir allowed it) and create it if needed; the
    directory itself stays.

    Deletes only what llmtune writes into such output: anything that appeared since the check is left alone and
    refused, and so is output of another kind.
    """
    path.mkdir(parents=True, exist_ok=True)
    found = output_kind(path)
    foreign = foreign_entries(path, kind_entries(kind))
    if found not in (None, kind):
        raise UserError(f"{path} now holds {with_article(found)}, not {with_article(kind)}; nothing was deleted")
    if foreign:
        raise UserError(
            f"{path} now holds files that are not part of an llmtune {kind} ({', '.join(foreign[:5])}); "
            "nothing was deleted"
        )
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def staged_directory(output: Path, kind: str):
    """A temporary directory beside `output` to write into; when the block succeeds it replaces `output` (output of
    `kind` check_output_dir allowed to replace, cleared with the same check), so the output appears complete or not
    at all; when the block fails it is removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        yield staging
        if output.exists():
            clear_output_dir(output, kind)
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def set_aside(path: Path) -> Path | None:
    """Make room for a new run in `path` (created if missing): the run there (check_output_dir allowed it) moves into
    a hidden sibling until the new run finishes (`discard`) or fails (`abandon` puts it back). None: nothing to move.
    The directory itself stays, so it may be the working directory.
    """
    path.mkdir(parents=True, exist_ok=True)
    entries = list(path.iterdir())
    if not entries:
        return None
    foreign = foreign_entries(path)
    if foreign:
        raise UserError(
            f"output_dir: {path} now holds files that are not part of an llmtune run ({', '.join(foreign[:5])}); "
            "nothing was moved"
        )
    aside = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.resolve().name}.replaced-"))
    for entry in entries:
        os.replace(entry, aside / entry.name)
    return aside


def discard(aside: Path | None) -> None:
    """Delete a run set aside for one that finished (or can be resumed)."""
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def abandon(path: Path, aside: Path | None, created: bool) -> None:
    """Undo a new run that failed: delete what it wrote in `path` (run files only), put back what it set aside, and
    remove the directory if the run created it."""
    if path.is_dir():
        foreign = set(foreign_entries(path))
        for entry in path.iterdir():
            if entry.name in foreign:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if aside is not None:
        for entry in aside.iterdir():
            os.replace(entry, path / entry.name)
        aside.rmdir()
    if created and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


@contextlib.contextmanager
def transaction(path: Path, recipe_text: str, *, resumed: bool, step: int, main: bool, stays, before_cleanup):
    """The run directory, opened for one run: what happens inside either finishes the run, or leaves the directory
    as it was before the command (a new run's files removed, the run it replaced put back; a resumed run keeps its
    checkpoints). An error that `stays(error)` accepts (a signal's stop, a lost peer) leaves a resumable run; a full
    disk says so. Only the main process (`main`) touches the directory; `before_cleanup` runs before it is cleaned.

    Raises:
        UserError: the disk filled up (or the directory stopped being writable) while writing.
    """
    previous, created = open_run_dir(path, recipe_text, resumed, step) if main else (None, False)
    try:
        yield
    except BaseException as error:
        if stays(error):
            if main:
                discard(previous)  # the new run can be resumed; the one it replaces is gone as asked
            raise
        full = is_disk_full(error, path)  # before cleaning up frees the space again
        if main:
            before_cleanup()
            if resumed:
                remove_leftovers(path)
            else:
                abandon(path, previous, created)
        if full:
            kept = "its checkpoints are as they were: continue with --resume" if resumed else "it is as it was"
            raise UserError(
                f"output_dir: the disk is full (no space left on device while writing {path}); {kept}. Free "
                "some space, or choose another directory with --output DIR"
            ) from None
        raise
    if main:
        discard(previous)


def open_run_dir(path: Path, recipe_text: str, resumed: bool, step: int) -> tuple[Path | None, bool]:
    """A new run starts in an empty directory (a run it replaces is set aside until it finishes); a resumed one drops
    what was written after its checkpoint. Either way the resolved recipe is written.
    Returns where the replaced run was set aside, and whether the run created its directory."""
    previous, created = None, False
    if resumed:
        remove_leftovers(path)
        reopen_run(path, step)
    else:
        created = not path.exists()
        previous = set_aside(path)
    write_atomic(path / RECIPE_FILE, recipe_text)
    return previous, created


def remove_leftovers(run_dir: Path) -> None:
    """Temporary directories of checkpoints that were being written or deleted when a run was killed."""
    root = run_dir / CHECKPOINTS_DIR
    for path in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(path, ignore_errors=True)


def is_disk_full(error: BaseException, path: Path) -> bool:
    """Whether an error while writing under `path` came from a full disk (or quota). torch and safetensors report
    it in their own exception types, often without the OS error, so a write error on a nearly full disk counts."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(cause) for sign in ("No space left on device", "StorageFull", "code: 28")):
            return True
        cause = cause.__cause__ or cause.__context__
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    return shutil.disk_usage(existing).free < 1 << 20


def reopen_run(path: Path, step: int) -> None:
    """A resumed run is unfinished again until it writes metrics.json; log lines written after the
    checkpoint's step, and the final test evaluation of a run being extended, are dropped:
    the resumed run writes them again."""
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
    """Valid JSON: a NaN or infinite number (a diverged model's metric) is written as null."""
    write_atomic(path, json.dumps(finite(value), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def finite(value):
    """`value` with every NaN or infinite float replaced by None, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(finite(row), ensure_ascii=False, allow_nan=False) + "\n" for row in rows))
