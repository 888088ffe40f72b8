"""`python tests/deepspeed_on_cpu.py ARGS` (under torchrun): llmtune ARGS with DeepSpeed ZeRO on CPU processes.

Accelerate turns DeepSpeed on only when the processes are not told to use the CPU (accelerate/state.py:
`ACCELERATE_USE_DEEPSPEED ... and not cpu`), and llmtune tells several CPU processes to use the CPU (that is how
Accelerate sets them up over gloo), so on this machine `accelerate launch --use_deepspeed` cannot shard, and llmtune
refuses it. DeepSpeed itself runs its ZeRO stages on CPU tensors over gloo (its CPU accelerator). For tests only, this
launcher marks each Accelerator llmtune creates as a DeepSpeed one, with the plugin Accelerate would build from the
variables `accelerate launch --use_deepspeed` sets (ACCELERATE_DEEPSPEED_ZERO_STAGE, ..._CONFIG_FILE), so that
Accelerate's own DeepSpeed preparation wraps the model and optimizer in the ZeRO engine here.
"""

from __future__ import annotations

import sys

from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType

from llmtune import cli
from llmtune.engine import builders, launch


def install() -> None:
    """Make every Accelerator llmtune creates a DeepSpeed one, and let llmtune's engine check pass on this CPU."""
    create = builders.new_accelerator

    def deepspeed_accelerator(**options):
        accelerator = create(**options)
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(accelerator.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        accelerator.state.deepspeed_plugins = plugin
        accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.DEEPSPEED
        accelerator.deepspeed_engine_wrapped = None  # (Accelerator.__init__ sets it only for DeepSpeed)
        return accelerator

    builders.new_accelerator = deepspeed_accelerator
    launch.accelerator_present = lambda: True


if __name__ == "__main__":
    install()
    sys.argv[0] = "llmtune"
    cli.main()
