"""How this process was launched (torchrun, `accelerate launch`): the process count, its rank, the engine the
Accelerate config chose; and what the sharding engines (fsdp.py, deepspeed_zero.py) need of the machine and the
recipe."""

from __future__ import annotations

import os
import sys

from ..common.errors import UserError
from ..common.lazy import torch


def world_size() -> int:
    """The number of processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_first_process() -> bool:
    """Whether this is the launch's first process (the only one without a launcher)."""
    return os.environ.get("RANK", "0") == "0"


def env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true", "yes")


def end_process_group() -> None:
    """Destroy the process groups this process joined (the launch's and DeepSpeed's), if any, as PyTorch asks each
    process to before it exits. Left to the interpreter's exit, gloo's worker threads can still hold asynchronous
    work nobody waited for (ZeRO-3 prefetches weights asynchronously) whose tensors are freed after Python is gone:
    the process then dies of SIGABRT at the very end of a run that succeeded, and torchrun reports it failed."""
    loaded = sys.modules.get("torch")  # a command that never loaded torch joined no group (and need not load it)
    if loaded is not None and loaded.distributed.is_available() and loaded.distributed.is_initialized():
        loaded.distributed.destroy_process_group()


def accelerator_present() -> bool:
    """Whether this machine has a GPU (or another device Accelerate can shard across)."""
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def refuse_quantization(recipe, engine: str) -> None:
    if getattr(recipe.method, "quantization", None):
        raise UserError(
            f"method.quantization: {recipe.method.quantization} is not supported with {engine} yet; train the "
            "quantized model on one GPU per process (data-parallel), or shard it unquantized"
        )
