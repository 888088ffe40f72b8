"""The dtypes weights train in (fp32 master weights under mixed precision) and the dtypes the saved model keeps."""

from __future__ import annotations

from ..common.lazy import torch

# Where training keeps the dtype each parameter was loaded in, so the saved model keeps the checkpoint's.
STORED_DTYPES = "_llmtune_stored_dtypes"


def set_precision(model, accelerate_precision: str, pure_bf16: bool = False) -> None:
    """Give the parameters the dtypes the recipe's training.precision trains them in.

    Mixed precision (bf16, fp16) keeps fp32 master weights: every trained parameter, and so AdamW's state, is fp32
    whatever the checkpoint stores (transformers loads bf16 checkpoints in bf16), because updates smaller than a
    bf16 weight's resolution would be lost; autocast runs the matmuls in the low precision. Frozen weights (an
    adapter's base model) stay as loaded. fp32 (no autocast) needs every weight in fp32. bf16-pure trains every
    parameter, optimizer state included, in bf16. The dtypes the weights were loaded in are recorded first, for
    `in_stored_dtypes`.
    """
    setattr(model, STORED_DTYPES, {name: p.dtype for name, p in model.named_parameters(remove_duplicate=False)})
    for param in model.parameters():
        if not param.is_floating_point():  # quantized weights (bitsandbytes) keep their own storage
            continue
        if pure_bf16:
            target = torch.bfloat16
        elif param.requires_grad or accelerate_precision == "no":
            target = torch.float32
        else:
            continue
        if param.dtype != target:
            param.data = param.data.to(target)


def in_stored_dtypes(model, state_dict: dict | None) -> dict | None:
    """The weights to save, each in the dtype the checkpoint stored it in (`set_precision` recorded them), so a
    bf16 checkpoint fine-tuned with fp32 master weights saves bf16 weights. `state_dict`: the whole weights of a
    sharded model, else None (the model's own). Returns `state_dict` itself when nothing needs casting."""
    stored = getattr(model, STORED_DTYPES, None) or {}
    weights = state_dict if state_dict is not None else model.state_dict()
    if all(weights[name].dtype == dtype for name, dtype in stored.items() if name in weights):
        return state_dict
    return {
        name: tensor.to(stored[name]) if name in stored and tensor.is_floating_point() else tensor
        for name, tensor in weights.items()
    }
