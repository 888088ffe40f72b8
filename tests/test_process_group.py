"""Every command ends the process group of a distributed launch before the process exits, as PyTorch asks: a run
that succeeded must not die at the very end (SIGABRT from gloo's threads during the interpreter's teardown), which
torchrun reports as a failed run."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT, torchrun, write_recipe, write_sentiment_files


@pytest.mark.parametrize("works", [True, False], ids=["succeeds", "user-error"])
def test_a_command_leaves_no_process_group_behind(works, cli, tiny_bert, tmp_path):
    import torch.distributed as dist

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # as under torchrun
    try:
        code, _, _ = cli("validate", recipe if works else tmp_path / "missing.yaml")
        assert code == (0 if works else 2)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_processes_that_end_their_group_exit_cleanly_after_asynchronous_work():
    for attempt in range(8):  # without the end, each exit fails about three times in four here
        finished = subprocess.run(
            torchrun(ROOT / "tests" / "async_work_then_exit.py"),
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert finished.returncode == 0, f"attempt {attempt}: " + finished.stderr[-3000:]
