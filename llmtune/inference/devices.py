"""The device side of running a model: the Accelerator a command runs under (a fresh one per run) and its
precision, and the memory a finished run gives back."""

from __future__ import annotations

import gc

from ..common.errors import UserError
from ..common.lazy import torch


def new_accelerator(**options):
    """An Accelerator with these options, whatever the process ran before. Accelerate keeps one precision per
    process and refuses another; a notebook or a sweep trains and evaluates run after run in one process, each
    with its own. The process group (PartialState) stays."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(**options)


def precision_label(recipe_precision: str, accelerate_precision: str) -> str:
    """What a run trains in: fp32, bf16-mixed or fp16-mixed (fp32 master weights under autocast), or bf16-pure;
    from the recipe's training.precision and Accelerate's mixed_precision (`mixed_precision`)."""
    if recipe_precision == "bf16-pure":
        return "bf16-pure"
    return "fp32" if accelerate_precision == "no" else f"{accelerate_precision}-mixed"


def mixed_precision(precision: str, evaluating: bool = False) -> str:
    """Accelerate's mixed_precision for the recipe's `training.precision`.

    Training and `llmtune eval` of its run use the same one, so that eval reproduces the run's metrics (on a GPU,
    validation during training runs under bf16 autocast). Evaluating on a machine that lacks the run's fp16 (it
    needs a GPU) falls back to fp32 instead of failing.
    """
    import torch

    if precision == "fp32":
        return "no"
    if precision == "bf16-pure":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise UserError("training.precision: bf16-pure needs a GPU with bf16 (Ampere or later); use fp16 or fp32")
        # The weights themselves are bf16 (models.set_precision): no autocast needed while training. The saved
        # model keeps the checkpoint's dtype, so evaluating it runs under bf16 autocast instead.
        return "bf16" if evaluating else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        if evaluating:
            return "no"
        raise UserError(
            "training.precision: fp16 needs a GPU and none is available; "
            "use auto or fp32 (bf16 runs on CPU, but slowly)"
        )
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # bf16 on CPU is far slower than fp32


def release() -> None:
    """Give the GPU memory a finished train or evaluate freed back to the device: collect what cycles still hold
    (Accelerate's wrapped forward refers to its model), then empty PyTorch's cache of freed blocks, which another
    process or a later model of another size could not use otherwise."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
