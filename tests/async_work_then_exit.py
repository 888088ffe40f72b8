"""`python tests/async_work_then_exit.py` under torchrun (two CPU processes, gloo): what a ZeRO-3 run leaves at its
end, asynchronous gathers on a subgroup, some dropped unwaited (prefetches nobody needed), then the end every llmtune
command makes (launch.end_process_group) and the interpreter's exit. Without that end, most such exits die of
SIGABRT ("terminate called without an active exception") after the work succeeded."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from llmtune.engine import launch


def gather_and_drop() -> None:
    group = dist.new_group([0, 1])  # as DeepSpeed makes its own groups
    works = []
    for step in range(200):
        gathered = torch.empty(2 * 4096)
        works.append(dist.all_gather_into_tensor(gathered, torch.full((4096,), float(step)), group, async_op=True))
    for work in works[:-5]:  # the last five dropped unwaited with this function's frame
        work.wait()
    dist.barrier()


if __name__ == "__main__":
    warnings.simplefilter("ignore", FutureWarning)  # all_gather_into_tensor's new name: not what this is about
    dist.init_process_group("gloo")
    gather_and_drop()
    launch.end_process_group()
