"""Running out of accelerator memory: the one line that says how much was used and which recipe keys lower it."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from ..common.errors import UserError
from ..recipe import Recipe
from . import checkpoints, tracking


def resumable(error: BaseException, run_dir: Path, resumed: bool, main: bool) -> bool:
    """Whether an out-of-memory stop leaves the run to resume: it keeps the checkpoints written before it (complete
    ones, written atomically), as a signal's stop does; a new run without any is removed."""
    return isinstance(error, torch.OutOfMemoryError) and (
        resumed or bool(main and checkpoints.checkpoint_dirs(run_dir))
    )


def out_of_memory(recipe: Recipe, accelerator: Accelerator, step: int, kept: bool) -> UserError:
    """The one line for an accelerator out of memory at `step`; `kept`: the run's checkpoints were kept."""
    training, method = recipe.training, recipe.method
    if torch.cuda.is_available():
        used = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
        used += f" of {torch.cuda.get_device_properties(accelerator.device).total_memory / 2**20:,.0f} MiB"
    else:
        used = f"peak memory {tracking.peak_memory()['peak_memory_mb']:,.0f} MB"
    batch = (
        f"training.max_tokens (now {training.max_tokens})"
        if training.max_tokens
        else f"training.batch_size (now {training.batch_size})"
    )
    lower = [
        f"{batch} (with training.gradient_accumulation_steps to keep the step size)",
        f"training.max_length (now {training.max_length})",
        "training.eval_batch_size (evaluation)",
    ]
    if not training.gradient_checkpointing:
        lower.append("training.gradient_checkpointing: true")
    if method.type == "full":
        lower.append("method.type: lora")
    elif not getattr(method, "quantization", None):
        lower.append("method.quantization: 4bit")
    if training.precision in ("auto", "fp32"):
        lower.append("training.precision: bf16")
    kept_line = "the run's checkpoints are kept (--resume continues)" if kept else "no checkpoint was written"
    return UserError(f"out of memory at step {step + 1} ({used}); lower it with " + ", ".join(lower) + f"; {kept_line}")


def reset_peak() -> None:
    """metrics.json's peak GPU memory is the run's own, not the process's so far."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
