"""A model's transformer layers counted from the embeddings up, for the two small-data remedies that act per layer
(Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning"): layer-wise learning-rate decay
(`training.layer_decay`) and re-initialising the top layers (`method.reinit_top_layers`).

Layers are found by name (`...layer.3.`, `...layers.3.`, GPT-2's `...h.3.`, T5's `...block.3.`), which covers the
architectures transformers names this way; a model whose layers no pattern finds gets no decay and is refused a
re-initialisation with one line.
"""

from __future__ import annotations

import re

import torch

from ..common.errors import UserError

LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|embed_positions|wte|wpe|shared)\.")


def depth(name: str, layers: int) -> int:
    """0 for the embeddings, i + 1 for layer i, layers + 1 for what sits on top (pooler, final norm, task head)."""
    match = LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if EMBEDDINGS.search(name) else layers + 1


def layer_count(model) -> int:
    """The number of stacked layers (the deepest layer index + 1 among the parameter names); 0 if none is named."""
    found = [LAYER.search(name) for name, _ in model.named_parameters()]
    return max((int(match.group(1)) + 1 for match in found if match), default=0)


def decayed_rate(name: str, layers: int, learning_rate: float, decay: float | None) -> float:
    """The learning rate of a body parameter under layer-wise decay: the top layer (and what sits above it) trains
    at the full rate, each layer below at `decay` times the rate of the one above, the embeddings at decay ** layers:
    lower layers hold the general features a small data set should change least."""
    if not decay or not layers:
        return learning_rate
    return learning_rate * decay ** (layers - min(depth(name, layers), layers))


def reinit_top_layers(model: torch.nn.Module, count: int) -> list[str]:
    """Re-initialise the top `count` layers of every layer stack, and the pooler, as the checkpoint's own
    initialisation would (pretrained top layers specialise in the pretraining task and can hurt a small data set).
    Returns the prefixes of the re-initialised modules.

    Raises:
        UserError: no layers found, or fewer than `count`.
    """
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and re.search(r"(?:^|\.)(?:layer|layers|h|block|blocks)$", name)
    ]
    if not stacks or not hasattr(model, "_init_weights"):
        raise UserError(
            "method.reinit_top_layers: this model's layers are not named like a transformers stack (layer.N, "
            "layers.N, h.N, block.N); leave method.reinit_top_layers out"
        )
    targets = []
    for name, stack in stacks:
        if count > len(stack):
            raise UserError(
                f"method.reinit_top_layers: {count} layers asked, but {name} has {len(stack)}; expected at most "
                f"{len(stack)}"
            )
        targets += [(f"{name}.{index}", stack[index]) for index in range(len(stack) - count, len(stack))]
    targets += [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "pooler"]
    for _, module in targets:
        for tensor in (*module.parameters(), *module.buffers()):
            # transformers skips tensors it marked as loaded from the checkpoint; these are to be drawn anew
            if hasattr(tensor, "_is_hf_initialized"):
                del tensor._is_hf_initialized
        module.apply(model._init_weights)
    return [name for name, _ in targets]
