"""The finished run's model, saved as plain transformers / peft files: the whole weights (gathered under FSDP or
ZeRO), each in the dtype the checkpoint stored it in."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from .. import models
from ..common import sharding
from ..recipe import Recipe
from . import deepspeed_zero


def whole_weights(accelerator: Accelerator, model) -> dict | None:
    """The whole weights to save, under FSDP or ZeRO (every process takes part in gathering them, the main process
    saves them); None when the model holds them whole."""
    if deepspeed_zero.engaged(accelerator):
        return deepspeed_zero.saved_state_dict(accelerator, model)
    if sharding.fsdp2_engaged(accelerator):
        return accelerator.get_state_dict(model)
    return None


def save_model(model, tokenizer, run_dir: Path, recipe: Recipe, state_dict: dict | None = None) -> None:
    """Save as plain transformers / peft files (safetensors), each weight in the dtype the checkpoint stored it in;
    `state_dict`: the whole weights of a sharded model."""
    state_dict = models.in_stored_dtypes(model, state_dict)
    options = {}
    if hasattr(model, "peft_config"):
        # Point the adapter at the hub id, not this machine's cache path, so it loads anywhere.
        for config in model.peft_config.values():
            config.base_model_name_or_path = recipe.model.name
        # llmtune never resizes the vocabulary: no hub lookup (and two peft warnings offline) to ask whether it did.
        options["save_embedding_layers"] = False
    model.save_pretrained(run_dir, safe_serialization=True, state_dict=state_dict, **options)
    tokenizer.save_pretrained(run_dir)
