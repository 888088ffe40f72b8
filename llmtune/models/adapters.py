"""The recipe's method applied to a loaded model: LoRA (and DoRA, rsLoRA), IA3 or prefix tuning through peft."""

from __future__ import annotations

from ..common.errors import UserError
from ..common.silence import peft_deprecations_silenced
from .schema import FullMethod, IA3Method, LoraMethod, Method, PrefixTuningMethod


def apply_method(model, method: Method, task_type: str, new_modules: list[str]):
    """Wrap the model for the recipe's method; full fine-tuning returns it unchanged."""
    if isinstance(method, FullMethod):
        return model
    import peft

    model_type = model.config.model_type
    if model_type == "encoder-decoder":  # BERT2BERT: adapt the layers the encoder's architecture adapts
        model_type = model.config.encoder.model_type
    modules_to_save = new_modules or None
    if isinstance(method, LoraMethod):
        targets = method.target_modules or peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            model_type, "all-linear"
        )
        from transformers.pytorch_utils import Conv1D

        config = peft.LoraConfig(
            task_type=task_type,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            use_dora=method.use_dora,
            use_rslora=method.use_rslora,
            target_modules=targets,
            modules_to_save=modules_to_save,
            # GPT-2's layers are Conv1D (weights stored transposed); peft would flip this itself,
            # with a warning per layer.
            fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
        )
    elif isinstance(method, IA3Method):
        config = peft.IA3Config(
            task_type=task_type,
            target_modules=method.target_modules,
            feedforward_modules=method.feedforward_modules,
            modules_to_save=modules_to_save,
        )
    elif isinstance(method, PrefixTuningMethod):
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    else:  # pragma: no cover - the schema admits no other method
        raise TypeError(method)
    try:
        with peft_deprecations_silenced():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"method: cannot apply {method.type} to {model_type}: {exc}") from None
    if isinstance(method, PrefixTuningMethod) and modules_to_save:
        # Prompt-learning configs have no modules_to_save; peft already trains the standard heads, this covers others.
        for name, param in wrapped.named_parameters():
            if any(f".{module}." in f".{name}" for module in modules_to_save):
                param.requires_grad_(True)
    return wrapped
