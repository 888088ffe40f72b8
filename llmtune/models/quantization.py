"""A frozen base loaded quantized by bitsandbytes (QLoRA's 4-bit NF4, or LLM.int8), and peft's preparation of
it for adapter training."""

from __future__ import annotations

import importlib.util

from ..common.errors import UserError
from ..common.lazy import torch
from ..common.silence import peft_deprecations_silenced

# Task heads of the transformers model classes: newly initialised and trained in full, so never quantized.
HEAD_MODULES = ["classifier", "score", "qa_outputs", "lm_head"]


def check_quantization_installed(what: str) -> None:
    """Raises UserError: bitsandbytes, which `what` (a recipe key and value) needs, is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{what} needs bitsandbytes, which is not installed: pip install 'llmtune[qlora]' (or bitsandbytes)"
        )


def quantized_loading(quantization: str) -> dict:
    """from_pretrained options that load the weights quantized: QLoRA's NF4 with double quantization and bf16
    compute for 4bit, LLM.int8 for 8bit; heads stay in float. On a GPU the weights load straight onto it."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        compute = torch.float16
    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=HEAD_MODULES,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=HEAD_MODULES)
    options = {"quantization_config": config}
    if torch.cuda.is_available():  # bitsandbytes quantizes on the device the weights land on
        options["device_map"] = {"": torch.cuda.current_device()}
    return options


def prepare_quantized(model, gradient_checkpointing: bool):
    """peft's preparation of a quantized model for adapter training: float norms and heads, input gradients,
    and gradient checkpointing when asked (the non-reentrant kind, as `enable_gradient_checkpointing`)."""
    from peft import prepare_model_for_kbit_training

    with peft_deprecations_silenced():
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
