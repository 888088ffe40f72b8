"""DeepSpeed ZeRO through Accelerate: it trains as data-parallel training does, checkpoints gather ZeRO's partitions
into the same engine-independent files (so a run resumes exactly, also across engines), the best checkpoint and the
saved model are the whole weights, and what llmtune cannot honour in a DeepSpeed config is refused with one line.

Accelerate turns DeepSpeed on only for processes that are not told to use the CPU; `deepspeed_on_cpu.py` marks the
Accelerator llmtune creates as a DeepSpeed one so that Accelerate's own DeepSpeed preparation runs ZeRO over two CPU
processes (gloo) here.
"""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest
import torch
from conftest import write_recipe, write_sentiment_files
from safetensors.torch import load_file
from test_bad_input import assert_user_error
from test_checkpoints import SETTINGS, sets
from test_fsdp import (
    assert_sharded_lora_generation_as_data_parallel,
    cut_after,
    finished,
    kill_after_checkpoints,
    start_two,
)

from llmtune.common.errors import UserError


def start(args: list, stage: int | None) -> subprocess.Popen:
    """llmtune ARGS on two CPU processes, under ZeRO `stage` or (None) data-parallel."""
    # What `accelerate launch --use_deepspeed --zero_stage N` sets.
    variables = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage)} if stage else {}
    return start_two(["deepspeed_on_cpu.py"] if stage else [], variables, args)


def launch(args: list, stage: int | None) -> str:
    return finished(start(args, stage))


def assert_close_result(run, reference, tolerance: float) -> None:
    """Every logged loss, the final validation and test metrics, and the saved weights within `tolerance`."""
    ours, theirs = (json.loads((path / "metrics.json").read_text()) for path in (run, reference))
    for split in ("validation", "test"):
        assert ours[split]["accuracy"] == theirs[split]["accuracy"], split
        assert ours[split]["cross_entropy"] == pytest.approx(theirs[split]["cross_entropy"], abs=tolerance), split
    weights, expected = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        assert weights[name].dtype == expected[name].dtype == torch.float32, name
        torch.testing.assert_close(weights[name], expected[name], rtol=0, atol=tolerance)

    def logged(path):
        return [e for e in map(json.loads, (path / "train_log.jsonl").read_text().splitlines()) if "loss" in e]

    ours_log, their_log = logged(run), logged(reference)
    assert [e["step"] for e in ours_log] == [e["step"] for e in their_log]
    assert [e["loss"] for e in ours_log] == pytest.approx([e["loss"] for e in their_log], abs=tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_as_data_parallel_does_and_resumes_exactly_after_sigkill(stage, tiny_bert, tmp_path):
    files = write_sentiment_files(tmp_path, repeat=8)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    train = ["train", recipe, *sets(*SETTINGS, "checkpointing.keep_last=20"), "--output"]  # 16 steps
    launch([*train, tmp_path / "ddp"], stage=None)
    out = launch([*train, tmp_path / "zero"], stage=stage)
    assert "2 process(es)" in out
    # ZeRO steps AdamW on flat fp32 partitions and reduces and clips gradients in its own order: the same training
    # as data-parallel up to float rounding.
    assert_close_result(tmp_path / "zero", tmp_path / "ddp", tolerance=1e-4)

    killed = tmp_path / "killed"
    kill_after_checkpoints(start([*train, killed], stage), killed, count=3)
    assert "resuming from" in launch([*train, killed, "--resume"], stage=stage)
    assert_close_result(killed, tmp_path / "zero", tolerance=1e-6)  # exactly the uninterrupted ZeRO run

    # Checkpoints are the same files under every engine: data-parallel → ZeRO, and ZeRO → one process.
    crossed = cut_after(tmp_path / "ddp", 5, tmp_path / "ddp-then-zero")
    assert "(step 5)" in launch([*train, crossed, "--resume"], stage=stage)
    assert_close_result(crossed, tmp_path / "ddp", tolerance=1e-4)
    back = cut_after(tmp_path / "zero", 5, tmp_path / "zero-then-ddp")
    assert "(step 5)" in launch([*train, back, "--resume"], stage=None)
    assert_close_result(back, tmp_path / "zero", tolerance=1e-4)


@pytest.mark.slow
def test_zero3_lora_generation_keeps_the_best_checkpoint_as_data_parallel_does(tiny_llama, tmp_path):
    def launch_runs(args, sharded: bool) -> str:
        return launch(args, stage=3 if sharded else None)

    assert_sharded_lora_generation_as_data_parallel(tiny_llama, tmp_path, launch_runs, atol=1e-5)


def accelerator_with(config: dict, processes: int = 2):
    """What deepspeed_zero.configure reads: the DeepSpeed config Accelerate loaded."""
    plugin = SimpleNamespace(deepspeed_config=config)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=processes)


def training_section(**values):
    defaults = {"batch_size": 8, "gradient_accumulation_steps": 2, "max_grad_norm": 1.0}
    return SimpleNamespace(**(defaults | values))


def test_the_recipe_fills_the_deepspeed_values_it_owns():
    from llmtune.engine import deepspeed_zero

    config = {"zero_optimization": {"stage": 3}, "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": 8}
    deepspeed_zero.configure(accelerator_with(config, processes=4), training_section())
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0 and config["train_batch_size"] == 64
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"zero_optimization": {"stage": 0}}, "zero_optimization.stage 0: llmtune trains with ZeRO stage 1, 2 or 3"),
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}, 'remove "optimizer" from'),
        ({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}, 'remove "scheduler" from'),
        (
            {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
            "zero_optimization.offload_optimizer is not supported yet",
        ),
        (
            {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5},
            "gradient_clipping is 0.5, but the recipe's training.max_grad_norm gives 1.0",
        ),
        (
            {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4},
            "gradient_accumulation_steps is 4, but the recipe's training.gradient_accumulation_steps gives 2",
        ),
    ],
    ids=["stage0", "optimizer", "scheduler", "offload", "clipping", "accumulation"],
)
def test_a_deepspeed_config_llmtune_cannot_honour_is_refused(config, fragment):
    from llmtune.engine import deepspeed_zero

    with pytest.raises(UserError, match="^accelerate config: ") as raised:
        deepspeed_zero.configure(accelerator_with(config), training_section())
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "present", "fragment"),
    [
        ([], False, "DeepSpeed needs GPUs"),
        (["method.type=lora", "method.quantization=4bit"], True, "method.quantization: 4bit is not supported with"),
        (["training.optimizer=adamw_8bit"], True, "training.optimizer: adamw_8bit is not supported with DeepSpeed"),
        (["training.compile=true"], True, "training.compile is not supported with DeepSpeed yet"),
    ],
    ids=["on-cpu", "quantization", "8bit-optimizer", "compile"],
)
def test_deepspeed_that_cannot_train_is_refused_before_anything_loads(
    settings, present, fragment, cli, tiny_bert, tmp_path, monkeypatch
):
    from llmtune.engine import launch

    monkeypatch.setattr(launch, "accelerator_present", lambda: present)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    assert_user_error(cli("train", recipe, *sets(*settings), "--output", tmp_path / "run"), fragment)
    assert not (tmp_path / "run").exists()


def test_deepspeed_selected_but_not_installed_is_refused(cli, tiny_bert, tmp_path, monkeypatch):
    import importlib.util

    from llmtune.engine import launch

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    monkeypatch.setattr(launch, "accelerator_present", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    result = cli("train", recipe, "--output", tmp_path / "run")
    assert_user_error(result, "DeepSpeed is selected but not installed: pip install deepspeed")


def test_zero3_partitioned_weights_make_evaluation_and_generation_wait_for_every_process():
    from llmtune.common import sharding

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not sharding.partitioned_by_zero3(model) and not sharding.sharded(model)
    model[0].weight.ds_id = 0  # what ZeRO-3 gives each parameter it partitions
    assert sharding.partitioned_by_zero3(model) and sharding.sharded(model)
