"""`python tests/fsdp_on_cpu.py ARGS` (under torchrun): llmtune ARGS with Accelerate's FSDP2 on CPU processes.

Accelerate picks FSDP only when the processes have GPUs or other accelerators (accelerate/state.py: its FSDP branch
lists the multi-device types and not MULTI_CPU), although torch's `fully_shard` and its state-dict functions run on
gloo. So on this machine `accelerate launch --use_fsdp` cannot shard, and llmtune refuses it. For tests only, this
launcher marks each Accelerator llmtune creates as FSDP2 (Accelerate's own FSDP2 preparation then shards the model),
so that the sharded code paths (gathered checkpoints and saved model, even evaluation batches, synchronised
generation) run here. Set the variables `accelerate launch --use_fsdp --fsdp_version 2` sets.
"""

from __future__ import annotations

import sys

from accelerate import FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType

from llmtune import cli
from llmtune.engine import builders, launch


def install() -> None:
    """Make every Accelerator llmtune creates an FSDP2 one, and let llmtune's engine check pass on this CPU."""
    create = builders.new_accelerator

    def fsdp_accelerator(**options):
        accelerator = create(**options)
        # Read from the FSDP_* variables, as `accelerate launch` passes them.
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
        return accelerator

    builders.new_accelerator = fsdp_accelerator
    launch.accelerator_present = lambda: True


if __name__ == "__main__":
    install()
    sys.argv[0] = "llmtune"
    cli.main()
