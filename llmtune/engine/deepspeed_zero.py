"""DeepSpeed ZeRO (stages 1-3), chosen by the user's `accelerate launch --config_file`: the parts of a run that
differ under it.

ZeRO keeps the fp32 weights and the optimizer state in flat partitions, one per process (stage 3 partitions the
model's parameters too). A checkpoint still holds whole tensors keyed by parameter name, in the same files a
data-parallel run writes: DeepSpeed's per-parameter accessors (`deepspeed.utils.safe_get_full_*`, collectives
under stage 3) assemble them, and their `safe_set_full_*` counterparts cut them back into this process's
partition. So a ZeRO checkpoint resumes on any engine and process count, and the other way round. DeepSpeed's own
`save_checkpoint` would write one file set per process, readable only by DeepSpeed with the same process count.

llmtune owns what the recipe states: the optimizer and schedule (training.*), the batch size, gradient
accumulation and clipping. The DeepSpeed config may leave those keys to "auto"; a config that sets them otherwise
is refused rather than silently overriding the recipe.
"""

from __future__ import annotations

import importlib.util

from ..common.errors import UserError
from ..common.lazy import torch
from . import launch

# DeepSpeed config keys llmtune fills from the recipe's training section.
OWNED = {
    "train_micro_batch_size_per_gpu": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "max_grad_norm",
}


def check_deepspeed(recipe) -> None:
    """Refuse, before anything loads, a DeepSpeed setup llmtune cannot train with correctly.

    Raises:
        UserError: what is not supported, and what to use instead.
    """
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("accelerate config: DeepSpeed is selected but not installed: pip install deepspeed")
    if not launch.accelerator_present():
        raise UserError(
            "accelerate config: DeepSpeed needs GPUs (or other accelerators): Accelerate runs CPU processes "
            "data-parallel without it. On CPU, launch without DeepSpeed (e.g. torchrun --nproc_per_node N)"
        )
    launch.refuse_quantization(recipe, "DeepSpeed")
    if recipe.training.compile:
        raise UserError(
            "training.compile is not supported with DeepSpeed yet (not tested on its engine); set training.compile: "
            "false"
        )
    if recipe.training.optimizer != "adamw":
        raise UserError(
            f"training.optimizer: {recipe.training.optimizer} is not supported with DeepSpeed (ZeRO partitions "
            "the optimizer state itself); use adamw"
        )


def engaged(accelerator) -> bool:
    """Whether the run trains under DeepSpeed."""
    return getattr(getattr(accelerator, "distributed_type", None), "value", None) == "DEEPSPEED"


def configure(accelerator, training) -> None:
    """Check the DeepSpeed config against what llmtune supports and fill in the values the recipe owns; before
    anything loads.

    Raises:
        UserError: a config key llmtune cannot honour, and what to set instead.
    """
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    zero = config.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        raise UserError(
            f"accelerate config: DeepSpeed zero_optimization.stage {stage}: llmtune trains with ZeRO stage 1, 2 or "
            "3 (without ZeRO, train data-parallel: launch without DeepSpeed)"
        )
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UserError(
                f"accelerate config: the DeepSpeed config sets a {section}; llmtune builds it from the recipe "
                f'(training.learning_rate, training.scheduler, ...): remove "{section}" from the DeepSpeed config'
            )
    for offload in ("offload_optimizer", "offload_param"):
        if str(zero.get(offload, {}).get("device", "none")).lower() != "none":
            raise UserError(
                f"accelerate config: DeepSpeed zero_optimization.{offload} is not supported yet (DeepSpeed offloads "
                "only its own compiled CPU optimizer); set its device to none, or shard with more GPUs"
            )
    ours = {
        "train_micro_batch_size_per_gpu": training.batch_size or 1,  # (token budgets vary it; DeepSpeed only logs it)
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "gradient_clipping": float(training.max_grad_norm or 0.0),
    }
    for key, value in ours.items():
        theirs = config.get(key, "auto")
        if theirs != "auto" and theirs != value:
            raise UserError(
                f"accelerate config: DeepSpeed {key} is {theirs}, but the recipe's training.{OWNED[key]} gives "
                f'{value}: set it to "auto" in the DeepSpeed config (llmtune fills it from the recipe)'
            )
        config[key] = value
    config["train_batch_size"] = ours["train_micro_batch_size_per_gpu"] * ours["gradient_accumulation_steps"]
    config["train_batch_size"] *= accelerator.num_processes
    # Under stage 3 Accelerate gathers the whole weights for the saved model only when this is set.
    zero["stage3_gather_16bit_weights_on_model_save"] = True


def whole_state(model, optimizer, is_main: bool) -> tuple[dict, dict]:
    """The trainable weights (fp32, from ZeRO's master copy) and the optimizer state keyed by parameter name, whole
    and on the CPU, on the main process; empty dicts elsewhere. Every process must call it (stage 3 gathers)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero_optimizer = _zero_optimizer(optimizer)
    _link_states(zero_optimizer)
    step, keys = _step_and_keys(zero_optimizer)
    weights, moments = {}, {}
    for name, param in _trainable(model):  # the same order everywhere: the accessors are collectives
        weight = safe_get_full_fp32_param(param)
        values = {key: safe_get_full_optimizer_state(param, key) for key in keys}
        if is_main:  # (the other processes drop their copies at once: a model's worth of memory each)
            weights[name] = weight.detach().cpu()
            moments[name] = {key: value.detach().cpu() for key, value in values.items()} | {"step": step.clone()}
    if not is_main:
        return {}, {}
    groups = [
        {**{k: v for k, v in group.items() if k not in ("params", "param_names")}, "params": group["param_names"]}
        for group in zero_optimizer.optimizer.param_groups
    ]
    return weights, {"state": moments, "param_groups": groups}


def load_state(model, optimizer, weights: dict, state: dict) -> None:
    """A whole, name-keyed checkpoint (any engine's) into this process's ZeRO partitions."""
    from deepspeed.utils import safe_set_full_optimizer_state

    load_weights(model, weights)
    zero_optimizer = _zero_optimizer(optimizer)
    names = [name for name, _ in _trainable(model)]
    first = state["state"][names[0]]
    keys = [key for key in first if key != "step"]
    _initialise_moments(zero_optimizer, keys, first["step"])
    _link_states(zero_optimizer)
    for name, param in _trainable(model):
        for key in keys:
            safe_set_full_optimizer_state(param, state["state"][name][key].to(param.device), key)
    saved_groups = {tuple(group["params"]): group for group in state["param_groups"]}
    for group in zero_optimizer.optimizer.param_groups:  # learning rates and the like, as saved
        saved = saved_groups.get(tuple(group["param_names"]), {})
        group.update({k: v for k, v in saved.items() if k not in ("params", "param_names")})


def load_weights(model, weights: dict) -> None:
    """Whole trainable weights into ZeRO's fp32 master copy and into the model's parameters (under stage 3, each
    gathered, changed on the first process and partitioned again)."""
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_set_full_fp32_param

    with torch.no_grad():
        for name, param in _trainable(model):
            value = weights[name]
            safe_set_full_fp32_param(param, value.to(param.device, torch.float32))
            with GatheredParameters([param], modifier_rank=0):
                param.copy_(value.to(param.device, param.dtype))


def saved_state_dict(accelerator, model) -> dict | None:
    """The whole model for save_pretrained, on the main process (None elsewhere): Accelerate's gathered weights,
    with the trainable ones from ZeRO's fp32 master copy (under bf16 the model itself holds bf16 copies)."""
    from deepspeed.utils import safe_get_full_fp32_param

    whole = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    # transformers (5.x) loading under ZeRO-3 keeps every renaming it knows for the architecture, not only those
    # the checkpoint needed, and save_pretrained reverses them all: BERT's LayerNorm.weight would be saved under
    # the legacy name gamma. Keep the ones loading used, as its other loading paths do.
    conversions = getattr(unwrapped, "_weight_conversions", None)
    if conversions:
        unwrapped._weight_conversions = [c for c in conversions if getattr(c, "was_used", lambda: True)()]
    master = {name: safe_get_full_fp32_param(param).detach().cpu() for name, param in _trainable(unwrapped)}
    if not accelerator.is_main_process:
        return None
    return {**whole, **{name: value for name, value in master.items() if name in whole}}


def _trainable(model):
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def _zero_optimizer(optimizer):
    """DeepSpeed's ZeRO optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _flat_partitions(zero_optimizer) -> list[torch.Tensor]:
    """The fp32 partitions the torch optimizer steps (stage 1-2 and stage 3 name them differently)."""
    if hasattr(zero_optimizer, "fp32_partitioned_groups_flat"):
        return list(zero_optimizer.fp32_partitioned_groups_flat)
    return list(zero_optimizer.single_partition_of_fp32_groups)


def _step_and_keys(zero_optimizer) -> tuple[torch.Tensor, list[str]]:
    """The torch optimizer's step count and its per-parameter state keys (exp_avg, exp_avg_sq for AdamW)."""
    moments = zero_optimizer.optimizer.state[_flat_partitions(zero_optimizer)[0]]
    return moments["step"].detach().cpu(), [key for key, value in moments.items() if key != "step"]


def _initialise_moments(zero_optimizer, keys: list[str], step: torch.Tensor) -> None:
    """Create the torch optimizer's state for each flat partition (torch creates it lazily at the first step),
    so that the checkpoint's values can be written into it."""
    group = zero_optimizer.optimizer.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")  # where torch's AdamW keeps its step count
    for flat in _flat_partitions(zero_optimizer):
        moments = zero_optimizer.optimizer.state[flat]
        for key in keys:
            moments.setdefault(key, torch.zeros_like(flat))
        moments["step"] = step.to(flat.device if on_device else "cpu", torch.float32).clone()  # one per group


def _link_states(zero_optimizer) -> None:
    """Point each parameter's view of the optimizer state at the state as it is now (stages 1-2; stage 3 looks it up
    each time). DeepSpeed 0.19 links them once, after the first group's first step, before torch has created the
    other groups' state: without this the accessors find no exp_avg for parameters outside the first group."""
    if hasattr(zero_optimizer, "_hp_optimizer_states_linked"):
        zero_optimizer._hp_optimizer_states_linked = False
        zero_optimizer._lazy_init_hp_params_optimizer_state()
