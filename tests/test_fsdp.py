"""Sharded training (FSDP2 through Accelerate): it trains exactly as data-parallel training does, checkpoints gather
the shards so that a run resumes exactly (also from a data-parallel checkpoint), the best checkpoint and the saved
model are the whole weights, and what cannot run is refused with one line before anything loads.

Accelerate runs FSDP only across GPUs (or other accelerators); `fsdp_on_cpu.py` marks the Accelerator llmtune creates
as FSDP2 so that Accelerate's own FSDP2 preparation shards the model over two CPU processes (gloo) here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
import torch
from conftest import RECIPES, ROOT, torchrun, write_recipe, write_sentiment_files
from safetensors.torch import load_file
from test_bad_input import assert_user_error
from test_checkpoints import SETTINGS, assert_same_result, checkpoint_steps, sets

# What `accelerate launch --use_fsdp --fsdp_version 2` sets (RAM-efficient loading is its default).
FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}


def start(args: list, fsdp: bool) -> subprocess.Popen:
    """llmtune ARGS on two CPU processes, sharded (FSDP2) or data-parallel."""
    return start_two(["fsdp_on_cpu.py"] if fsdp else [], FSDP if fsdp else {}, args)


def start_two(launcher: list[str], variables: dict, args: list) -> subprocess.Popen:
    """llmtune ARGS under torchrun on two CPU processes: through tests/LAUNCHER (an engine forced onto the CPU) or
    plainly (data-parallel), with these environment variables."""
    program = [ROOT / "tests" / launcher[0]] if launcher else ["-m", "llmtune"]
    return subprocess.Popen(
        torchrun(*program, *args),
        cwd=ROOT,
        # PYTHONFAULTHANDLER: a process that dies of a signal (SIGABRT from C++) prints where each thread was
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **variables},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def launch(args: list, fsdp: bool) -> str:
    """As start, to the end; returns stdout."""
    return finished(start(args, fsdp))


def finished(process: subprocess.Popen) -> str:
    """The stdout of a start_two run that succeeded."""
    out, err = process.communicate(timeout=300)
    # The first process's error, not torchrun's summary after it: a Python traceback, or what a process killed by
    # a signal (an uncaught C++ exception's SIGABRT) printed on its way out.
    starts = [i for i in map(err.find, ("Traceback", "terminate called", "Fatal Python error")) if i >= 0]
    assert process.returncode == 0, err[min(starts) : min(starts) + 12000] if starts else err[-3000:]
    return out


def kill_after_checkpoints(process: subprocess.Popen, run, count: int) -> None:
    """SIGKILL every process of a started run once `count` checkpoints exist."""
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and len(checkpoint_steps(run)) < count:
        time.sleep(0.005)
    for child in psutil.Process(process.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    process.kill()
    process.communicate(timeout=60)
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"


def cut_after(run, step: int, copy):
    """A copy of a finished run with only its checkpoints up to `step`: as if it had been killed then."""
    shutil.copytree(run, copy)
    for checkpoint in (copy / "checkpoints").iterdir():
        if int(checkpoint.name.removeprefix("step-")) > step:
            shutil.rmtree(checkpoint)
    (copy / "metrics.json").unlink()
    return copy


@pytest.mark.slow
def test_fsdp_trains_as_data_parallel_does_and_resumes_exactly_after_sigkill(tiny_bert, tmp_path):
    files = write_sentiment_files(tmp_path, repeat=8)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    train = ["train", recipe, *sets(*SETTINGS, "checkpointing.keep_last=20"), "--output"]  # 16 steps
    launch([*train, tmp_path / "ddp"], fsdp=False)
    out = launch([*train, tmp_path / "fsdp"], fsdp=True)
    assert "2 process(es)" in out
    # The new classifier head exists only on the first process before sharding (RAM-efficient loading); the
    # shards, the optimizer and the dropout masks still match data-parallel training step for step.
    assert_same_result(tmp_path / "fsdp", tmp_path / "ddp")

    killed = tmp_path / "killed"
    kill_after_checkpoints(start([*train, killed], fsdp=True), killed, count=3)  # both training processes, mid-run
    assert "resuming from" in launch([*train, killed, "--resume"], fsdp=True)
    assert_same_result(killed, tmp_path / "ddp")

    crossed = cut_after(tmp_path / "ddp", 5, tmp_path / "ddp-then-fsdp")  # a data-parallel checkpoint, sharded
    assert "(step 5)" in launch([*train, crossed, "--resume"], fsdp=True)
    assert_same_result(crossed, tmp_path / "ddp")


@pytest.mark.slow
def test_fsdp_lora_generation_keeps_the_best_checkpoint_as_data_parallel_does(tiny_llama, tmp_path):
    assert_sharded_lora_generation_as_data_parallel(tiny_llama, tmp_path, launch, atol=1e-6)


def assert_sharded_lora_generation_as_data_parallel(tiny_llama, tmp_path, launch_runs, atol: float) -> None:
    """LoRA on a tiny Llama, translation by generation over uneven shards (29 rows), the best of two validations
    kept: sharded (`launch_runs(args, True)`) as data-parallel (`launch_runs(args, False)`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = [{"de": f"ein hund läuft {i}", "en": f"a dog runs {i}"} for i in range(24)]
    rows += [{"de": "zwei katzen schlafen heute", "en": "two cats sleep today"}] * 5  # 29: uneven shards
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = sets(
        f"model.name={tiny_llama}", f"data.train={data}", f"data.validation={data}", "data.test=null",
        "training.batch_size=4", "training.max_steps=4", "training.learning_rate=1e-2", "task.max_new_tokens=6",
        "evaluation.every_n_steps=2", "checkpointing.every_n_steps=2", "training.log_every_n_steps=1",
    )  # fmt: skip
    train = ["train", RECIPES / "translation-gpt.yaml", *args, "--output"]
    launch_runs([*train, tmp_path / "ddp"], False)
    out = launch_runs([*train, tmp_path / "sharded"], True)
    ours, theirs = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("sharded", "ddp"))
    assert "using the best checkpoint: step 2" in out  # bleu ties, so the earlier step stays the best
    assert ours["validation"]["cross_entropy"] == pytest.approx(theirs["validation"]["cross_entropy"], abs=atol)
    generated = [
        [json.loads(line)["predicted"] for line in (tmp_path / run / "predictions.jsonl").read_text().splitlines()]
        for run in ("sharded", "ddp")
    ]
    assert generated[0] == generated[1] and len(generated[0]) == 29  # generation synchronised over the processes
    adapter, expected = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("sharded", "ddp"))
    assert adapter.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(adapter[name], expected[name], rtol=0, atol=atol)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "sharded")  # plain peft


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version 1: llmtune shards with FSDP2 only"),
        (FSDP, "FSDP needs GPUs"),
    ],
    ids=["fsdp1", "fsdp-on-cpu"],
)
def test_an_engine_that_cannot_train_here_is_refused_before_anything_loads(
    variables, fragment, cli, tiny_bert, tmp_path, monkeypatch
):
    from llmtune.engine import launch

    monkeypatch.setattr(launch, "accelerator_present", lambda: False)  # as here, also on a GPU machine
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    for command in (["validate", recipe], ["train", recipe, "--output", tmp_path / "run"]):
        assert_user_error(cli(*command), fragment)
    assert not (tmp_path / "run").exists()


def test_quantization_with_fsdp_is_refused(cli, tiny_bert, tmp_path, monkeypatch):
    from llmtune.engine import launch

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    for variable, value in FSDP.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(launch, "accelerator_present", lambda: True)  # as on a GPU machine
    quantized = sets("method.type=lora", "method.quantization=4bit")
    assert_user_error(
        cli("train", recipe, *quantized, "--output", tmp_path / "run"), "method.quantization: 4bit is not supported"
    )
    assert not (tmp_path / "run").exists()
