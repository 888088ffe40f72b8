"""Optimizer steps that do not log make no host synchronization: the loss, the token counts and the gradient norm
stay on the device until a logging step reads them (on a GPU each read would wait for the queued kernels)."""

from __future__ import annotations

import pytest
from conftest import write_recipe, write_sentiment_files
from torch.profiler import ProfilerActivity, profile, record_function

from llmtune import load_recipe
from llmtune.engine import training

SYNC_OP = "aten::_local_scalar_dense"  # what .item(), float(tensor), bool(tensor) and .tolist() run
LOG_EVERY = 3
# Reads that are not the loop's: transformers' attention-mask builder asks whether the batch has padding (in the
# model's forward, on every device), and torch's fused AdamW kernel on CPU reads its CPU step counters (on CUDA they
# stay on the device).
NOT_THE_LOOPS = ("llmtune-test-model-forward", "aten::_fused_adamw_")


def profile_steps(recipe_path, monkeypatch, *overrides) -> list[dict]:
    """Train, profiling the loop; per optimizer step, the count of each profiled op (a marker between batches
    splits the profile into steps; gradient accumulation is off, so one batch is one step)."""
    epoch_batches = training.epoch_batches

    def marked(run, state):
        for batch in epoch_batches(run, state):
            with record_function("llmtune-test-step-boundary"):
                pass
            yield batch

    fit = training.fit
    events = []

    def profiled_fit(run, state):
        base = run.accelerator.unwrap_model(run.model).base_model
        forward = base.forward

        def marked_forward(*args, **kwargs):
            with record_function("llmtune-test-model-forward"):
                return forward(*args, **kwargs)

        base.forward = marked_forward
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            state = fit(run, state)
        events.extend(profiler.events())
        return state

    monkeypatch.setattr(training, "epoch_batches", marked)
    monkeypatch.setattr(training, "fit", profiled_fit)
    recipe = load_recipe(recipe_path, list(overrides))
    training.train(recipe, echo=lambda *a: None)
    boundaries = sorted(e.time_range.start for e in events if e.name == "llmtune-test-step-boundary")
    steps = [{} for _ in boundaries]
    for event in events:
        if event.name == SYNC_OP and inside(event, NOT_THE_LOOPS):
            continue
        start = event.time_range.start
        if start < boundaries[0]:
            continue
        step = sum(1 for b in boundaries if b <= start) - 1
        steps[step][event.name] = steps[step].get(event.name, 0) + 1
    return steps


def inside(event, names: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


@pytest.mark.parametrize("clip", [True, False])
def test_no_host_sync_on_steps_that_do_not_log(clip, tiny_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    steps = profile_steps(
        recipe,
        monkeypatch,
        "data.validation=null",
        "data.test=null",
        "checkpointing.at_epoch_end=false",
        "training.max_steps=7",
        f"training.log_every_n_steps={LOG_EVERY}",
        "training.batch_size=4",
        f"training.max_grad_norm={1.0 if clip else 'null'}",
    )
    assert len(steps) == 7
    syncs = [counts.get(SYNC_OP, 0) for counts in steps]
    logging = [step for step in range(1, 8) if step % LOG_EVERY == 0 or step == 7]
    assert all(syncs[step - 1] > 0 for step in logging), syncs  # the profile sees the reads a log line makes
    assert [syncs[step - 1] for step in range(1, 8) if step not in logging] == [0] * (7 - len(logging)), syncs
