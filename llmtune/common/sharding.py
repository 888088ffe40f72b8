"""What "sharded" means, in one place: a model whose parameters are partitioned over the processes, by FSDP2 or
by DeepSpeed ZeRO stage 3. Each forward pass of such a model gathers the weights from every process, so all of
them must run each forward pass (an evaluation batch, a generation step) together, until all are done."""

from __future__ import annotations


def sharded(model) -> bool:
    """Whether FSDP2 or ZeRO stage 3 partitions the model's parameters over the processes."""
    return partitioned_by_zero3(model) or wrapped_by_fsdp2(model)


def partitioned_by_zero3(model) -> bool:
    """Whether ZeRO stage 3 partitions the model's parameters (each carries a `ds_id`)."""
    first = next(iter(model.parameters()), None)
    return first is not None and hasattr(first, "ds_id")


def wrapped_by_fsdp2(model) -> bool:
    """Whether FSDP2 shards the model, or the model a wrapper (peft, DistributedDataParallel) holds."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2
        return False
    return isinstance(model, FSDPModule) or any(isinstance(module, FSDPModule) for module in model.children())


def fsdp2_engaged(accelerator) -> bool:
    """Whether the run's Accelerate config shards parameters and optimizer state with FSDP2."""
    return bool(getattr(accelerator, "is_fsdp2", False))
