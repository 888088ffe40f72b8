"""Accelerator memory: an out-of-memory error is one line naming the recipe keys that lower it, and keeps the
run's checkpoints; `train` and `evaluate` hold nothing of the run once they return."""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import write_recipe, write_sentiment_files

from llmtune import evaluate, load_recipe
from llmtune.engine import builders, checkpoints, training


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_out_of_memory_is_one_line_and_keeps_the_checkpoints(cli, tiny_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    train_step, calls = training.train_step, []

    def runs_out_at_step_3(run, batch):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_step(run, batch)

    monkeypatch.setattr(training, "train_step", runs_out_at_step_3)
    options = sets("training.max_steps=4", "training.batch_size=4", "checkpointing.every_n_steps=2")
    code, out, err = cli("train", recipe, *options)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]  # the fixture's leakage
    assert len(lines) == 1 and lines[0].startswith("error: out of memory at step 3 (peak memory "), err
    for key in ("training.batch_size (now 4)", "training.max_length", "training.gradient_checkpointing: true",
                "method.type: lora", "training.eval_batch_size", "--resume"):  # fmt: skip
        assert key in lines[0], key
    assert "Traceback" not in err + out
    run_dir = tmp_path / "run"
    assert [path.name for path in checkpoints.checkpoint_dirs(run_dir)] == ["step-2"]
    assert checkpoints.verify(run_dir / "checkpoints" / "step-2") is None  # complete, checksums match
    monkeypatch.setattr(training, "train_step", train_step)
    code, out, err = cli("train", recipe, *options, "--resume")
    assert code == 0, err
    assert (run_dir / "metrics.json").exists()


def test_out_of_memory_before_any_checkpoint_leaves_no_run(cli, tiny_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))

    def out_of_memory(run, batch):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(training, "train_step", out_of_memory)
    code, out, err = cli("train", recipe, *sets("training.max_steps=2"))
    errors = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 2 and len(errors) == 1 and "no checkpoint was written" in errors[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: Accelerate's autocast wrapper refers to the model
def test_train_and_evaluate_keep_no_reference_to_the_model_or_optimizer(precision, tiny_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    made = {}
    load_model, make_optimizer = builders.load_model, builders.make_optimizer

    def recording_load_model(*args, **kwargs):
        model, new_modules = load_model(*args, **kwargs)
        made["model"] = weakref.ref(model)
        return model, new_modules

    def recording_make_optimizer(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        made["optimizer"] = weakref.ref(optimizer)
        return optimizer

    monkeypatch.setattr(builders, "load_model", recording_load_model)
    monkeypatch.setattr(builders, "make_optimizer", recording_make_optimizer)
    overrides = ["training.max_steps=2", "data.validation=null", f"training.precision={precision}"]
    result = training.train(load_recipe(recipe, overrides))
    assert made["model"]() is None and made["optimizer"]() is None, "train() kept the run's model or optimizer"

    from llmtune.inference import evaluation

    load_run, loaded = evaluation.load_run, {}

    def recording_load_run(*args, **kwargs):
        run = load_run(*args, **kwargs)
        loaded["model"] = weakref.ref(run.model)
        return run

    monkeypatch.setattr(evaluation, "load_run", recording_load_run)
    evaluate(result.run_dir, split="test")
    assert loaded["model"]() is None, "evaluate() kept the model"
