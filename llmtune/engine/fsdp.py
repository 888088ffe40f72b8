"""FSDP2, chosen by `accelerate launch --use_fsdp --fsdp_version 2`: what llmtune needs of it before anything loads.
Checkpoints and the saved model gather its shards (checkpoints.whole_state); FSDP1 is not supported."""

from __future__ import annotations

import os

from ..common.errors import UserError
from ..common.lazy import torch
from . import launch


def check_fsdp(recipe) -> None:
    """Refuse an FSDP setup llmtune cannot train with correctly.

    Raises:
        UserError: the engine, and what to use instead.
    """
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError(
            f"accelerate config: fsdp_version {os.environ.get('FSDP_VERSION', '1')}: llmtune shards with FSDP2 only; "
            "set fsdp_version: 2 in the config (or accelerate launch --use_fsdp --fsdp_version 2)"
        )
    if torch.__version__ < "2.6":
        raise UserError(f"accelerate config: FSDP2 needs torch 2.6 or later (installed: {torch.__version__})")
    if not launch.accelerator_present():
        raise UserError(
            "accelerate config: FSDP needs GPUs (or other accelerators): Accelerate shards only across devices and "
            "would run CPU processes data-parallel with the weights loaded on the first one alone. On CPU, launch "
            "without --use_fsdp (data-parallel, e.g. torchrun --nproc_per_node N)"
        )
    launch.refuse_quantization(recipe, "FSDP")
