"""Every training option does what it says, on CPU: precision, compile, accumulation, schedules, warmup, head
learning rate and gradient checkpointing."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import minilm_dir, write_recipe
from safetensors.torch import load_file
from test_seq2seq import parallel, t5_checkpoint

from llmtune import evaluate, load_recipe, train

QUIET_RUN = ("data.validation=null", "data.test=null", "training.log_every_n_steps=1")


def run(recipe_path, *overrides, resume=False):
    return train(load_recipe(recipe_path, list(overrides)), echo=lambda *a: None, resume=resume)


def log(run_dir) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry and "split" not in entry]


def weights(run_dir) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (run_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(run_dir / name)


def assert_same_weights(got: dict, expected: dict, tolerance: float) -> None:
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=tolerance, atol=tolerance)


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory):
    """tiny_bert's shape without dropout: batches of different sizes then see the same network."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert-no-dropout")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def qa_recipe(folder, model) -> tuple:
    """A generative QA recipe for a decoder, with its overrides for eight rows."""
    rows = [
        {"question": "Where is the treasure?", "context": f"The treasure is under the old oak tree number {i}.",
         "answers": {"text": [f"under the old oak tree number {i}"], "answer_start": [16]}}
        for i in range(8)
    ]  # fmt: skip
    data = folder / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = folder / "qa.yaml"
    recipe.write_text(
        f"model:\n  name: {model}\ntask:\n  type: question_answering\n  generative: true\n"
        f"data:\n  train: {data}\n  validation: {data}\n  test: {data}\n"
        f"training:\n  epochs: 1\n  batch_size: 4\n  max_length: 64\noutput_dir: {folder / 'run'}\n"
    )
    return recipe


def translation_recipe(folder, model) -> tuple:
    recipe = folder / "mt.yaml"
    recipe.write_text(
        f"model:\n  name: {model}\ntask:\n  type: translation\n  source_lang: de\n  target_lang: en\n"
        f"  max_new_tokens: 8\ndata:\n  train: {parallel('train', 16)}\n  validation: {parallel('val', 8)}\n"
        f"  test: {parallel('val', 8)}\ntraining:\n  epochs: 1\n  batch_size: 8\n  learning_rate: 1e-3\n"
        f"output_dir: {folder / 'run'}\n"
    )
    return recipe


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly_and_its_checkpoints_resume_without_compile(
    tiny_bert, sentiment_files, tmp_path
):
    # Checkpoints hold the plain parameter names, not torch.compile's `_orig_mod.` ones, so either can resume them.
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    common = (
        "training.compile=true",
        "training.scheduler=constant",
        "checkpointing.every_n_steps=2",
        "training.log_every_n_steps=1",
        "data.validation=null",
        "data.test=null",
    )
    whole = run(recipe, *common, "training.max_steps=4", f"output_dir={tmp_path / 'whole'}").run_dir
    part = run(recipe, *common, "training.max_steps=2", f"output_dir={tmp_path / 'part'}").run_dir
    checkpoint = load_file(part / "checkpoints" / "step-2" / "trainable.safetensors")
    assert checkpoint and not [name for name in checkpoint if "_orig_mod" in name]
    eager = shutil.copytree(part, tmp_path / "eager")

    resumed = run(recipe, *common, "training.max_steps=4", f"output_dir={part}", resume=True).run_dir
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert [e["loss"] for e in log(resumed)] == pytest.approx([e["loss"] for e in log(whole)], rel=1e-5)

    # Compiled kernels draw dropout masks differently, so the eager continuation is close, not equal.
    overrides = [item for item in common if item != "training.compile=true"]
    continued = run(recipe, *overrides, "training.max_steps=4", f"output_dir={eager}", resume=True).run_dir
    assert [e["step"] for e in log(continued)] == [1, 2, 3, 4]
    assert set(load_file(continued / "model.safetensors")) == set(expected)


@pytest.mark.parametrize("family", ["encoder", "decoder", "encoder-decoder"])
def test_bf16_trains_every_family_under_autocast_and_saves_fp32_weights(family, tiny_bert, tiny_llama, tmp_path):
    if family == "encoder":
        recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_files(tmp_path))
    elif family == "decoder":
        recipe = qa_recipe(tmp_path, tiny_llama)
    else:
        recipe = translation_recipe(tmp_path, t5_checkpoint(tmp_path / "t5"))
    fp32 = run(recipe, "training.precision=fp32", "training.log_every_n_steps=1", f"output_dir={tmp_path / 'fp32'}")
    bf16 = run(recipe, "training.precision=bf16", "training.log_every_n_steps=1", f"output_dir={tmp_path / 'bf16'}")
    first = [log(result.run_dir)[0]["loss"] for result in (fp32, bf16)]
    assert first[1] != first[0] and first[1] == pytest.approx(first[0], rel=0.05)  # autocast ran, and close
    assert {tensor.dtype for tensor in weights(bf16.run_dir).values()} == {torch.float32}
    assert all(math.isfinite(value) for value in bf16.metrics["test"].values() if isinstance(value, float))
    # `llmtune eval` runs under the run's precision, so it reproduces the run's figures (in this same process:
    # Accelerate keeps one precision per process unless reset), and an fp32 run's in fp32.
    for result in (bf16, fp32):
        metrics, _ = evaluate(result.run_dir, split="test")
        expected = {k: v for k, v in result.metrics["test"].items() if k != "runtime_s"}
        assert {k: v for k, v in metrics.items() if k != "runtime_s"} == expected


def write_files(folder):
    from conftest import write_sentiment_files

    return write_sentiment_files(folder)


@pytest.mark.parametrize(
    "model, method",
    [("bert_without_dropout", "full"), ("tiny_bert", "lora"), ("tiny_llama", "lora"), ("tiny_llama", "full")],
)
def test_gradient_checkpointing_gives_the_same_losses_gradients_and_weights(model, method, request, tmp_path):
    path = request.getfixturevalue(model)
    if model == "tiny_llama":
        recipe = qa_recipe(tmp_path, path)
    else:
        recipe = write_recipe(tmp_path / "r.yaml", path, write_files(tmp_path))
    common = (*QUIET_RUN, f"method.type={method}", "training.learning_rate=1e-3", "training.max_steps=4")
    plain = run(recipe, *common, f"output_dir={tmp_path / 'plain'}").run_dir
    checkpointed = run(recipe, *common, "training.gradient_checkpointing=true", f"output_dir={tmp_path / 'gc'}")
    if method == "full":  # the saved model still generates with its cache
        assert json.loads((checkpointed.run_dir / "config.json").read_text()).get("use_cache", True) is not False
    for ours, theirs in zip(log(checkpointed.run_dir), log(plain), strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5, abs=1e-6)
    assert_same_weights(weights(checkpointed.run_dir), weights(plain), 1e-5)


def test_gradient_checkpointing_really_recomputes(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    # Counting a part of each layer's forward calls: with checkpointing it runs again in the backward pass.
    from transformers.models.bert import modeling_bert

    calls = []
    forward = modeling_bert.BertIntermediate.forward
    monkeypatch.setattr(
        modeling_bert.BertIntermediate, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    )
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    run(recipe, *QUIET_RUN, "training.max_steps=1", f"output_dir={tmp_path / 'plain'}")
    plain, calls[:] = len(calls), []
    run(
        recipe,
        *QUIET_RUN,
        "training.max_steps=1",
        "training.gradient_checkpointing=true",
        f"output_dir={tmp_path / 'gc'}",
    )
    assert plain == 2 and len(calls) == 4  # two layers, one batch


def test_accumulating_two_half_batches_equals_one_full_batch(bert_without_dropout, tmp_path):
    files = {}
    rows = ["a wonderful, moving film", "dull and far too long", "I loved every minute of it", "a waste of money",
            "great", "the plot makes no sense at all", "a delight from start to finish", "boring"]  # fmt: skip
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.csv"
        files[split].write_text(
            "text,label\n" + "".join(f'"{t}",{("negative", "positive")[i % 2 == 0]}\n' for i, t in enumerate(rows))
        )
    recipe = write_recipe(tmp_path / "r.yaml", bert_without_dropout, files)
    common = (*QUIET_RUN, "training.epochs=4", "training.learning_rate=1e-3")
    whole = run(recipe, *common, "training.batch_size=8", f"output_dir={tmp_path / 'whole'}").run_dir
    halves = run(
        recipe,
        *common,
        "training.batch_size=4",
        "training.gradient_accumulation_steps=2",
        f"output_dir={tmp_path / 'h'}",
    ).run_dir
    ours, theirs = log(halves), log(whole)
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [1, 2, 3, 4]
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(weights(halves), weights(whole), 1e-5)


SCHEDULES = {  # the learning rate after step s of T, with W warmup steps, as a share of the peak
    "linear": lambda s, W, T: s / W if s < W else max(0.0, (T - s) / (T - W)),
    "cosine": lambda s, W, T: s / W if s < W else 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W))),
    "cosine_with_restarts": lambda s, W, T: (
        s / W if s < W else 0.5 * (1 + math.cos(math.pi * ((s - W) / (T - W) % 1))) if s < T else 0.0
    ),
    "constant": lambda s, W, T: 1.0,
    "constant_with_warmup": lambda s, W, T: s / W if s < W else 1.0,
    "polynomial": lambda s, W, T: s / W if s < W else (1 - 1e-7 / 1e-3) * (T - s) / (T - W) + 1e-7 / 1e-3,
    "inverse_sqrt": lambda s, W, T: s / W if s < W else 1 / math.sqrt(s / W),
}


@pytest.mark.parametrize("scheduler", SCHEDULES)
def test_each_schedule_with_warmup_steps_sets_the_logged_learning_rate(scheduler, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    result = run(recipe, *QUIET_RUN, f"training.scheduler={scheduler}", "training.warmup_steps=3",
                 "training.max_steps=8", "training.learning_rate=1e-3", "training.batch_size=4")  # fmt: skip
    logged = [(entry["step"], entry["learning_rate"]) for entry in log(result.run_dir)]
    expected = [(s, 1e-3 * SCHEDULES[scheduler](s, 3, 8)) for s in range(1, 9)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [lr for _, lr in logged] == pytest.approx([lr for _, lr in expected], rel=1e-6, abs=1e-12)


def test_head_learning_rate_trains_the_new_head_at_its_own_rate(bert_without_dropout, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe = write_recipe(tmp_path / "r.yaml", bert_without_dropout, sentiment_files)
    common = (*QUIET_RUN, "training.max_steps=2", "training.learning_rate=1e-6", "training.scheduler=constant",
              "training.weight_decay=0", "training.seed=3")  # fmt: skip
    start = AutoModelForSequenceClassification.from_pretrained(bert_without_dropout, num_labels=2)  # seeded below

    def moved(run_dir):
        trained = load_file(run_dir / "model.safetensors")
        body = max(
            (trained[n] - p.detach()).abs().max().item()
            for n, p in start.named_parameters()
            if n.startswith("bert.encoder")
        )
        return body, trained["classifier.weight"]

    body_fast, head_fast = moved(
        run(recipe, *common, "training.head_learning_rate=1e-2", f"output_dir={tmp_path / 'a'}").run_dir
    )
    body_slow, head_slow = moved(run(recipe, *common, f"output_dir={tmp_path / 'b'}").run_dir)
    # Adam moves each weight by about the learning rate per step, whatever its gradient.
    assert body_fast < 1e-5 and body_slow < 1e-5
    assert (head_fast - head_slow).abs().max().item() > 1e-2


def test_min_steps_passes_over_a_small_split_more_often_and_says_so(cli, tiny_bert, sentiment_files, tmp_path):
    """32 rows in batches of 16 are 2 steps an epoch: one epoch with min_steps 5 trains 5 steps (2.5 passes), the
    schedule and the log count 5, and the first line names the key; max_steps still wins over it."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    settings = [*QUIET_RUN, "training.epochs=1", "training.batch_size=16", "training.min_steps=5"]
    code, out, err = cli("train", recipe, *[arg for item in settings for arg in ("--set", item)])
    assert code == 0, err
    assert "5 steps of 16 examples" in out and "training.min_steps: 2.5 passes over the training split" in out, out
    entries = log(tmp_path / "run")
    assert [entry["step"] for entry in entries] == [1, 2, 3, 4, 5]
    assert entries[-1]["learning_rate"] == 0  # the linear schedule ends at step 5, not at the epoch's 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 2.5

    code, out, err = cli("train", recipe, *[arg for item in settings for arg in ("--set", item)], "--set",
                         "training.max_steps=3", "--overwrite")  # fmt: skip
    assert code == 0 and "3 steps of 16 examples" in out and "training.min_steps" not in out, out
