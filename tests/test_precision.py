"""Mixed precision keeps fp32 master weights whatever dtype the checkpoint is stored in; bf16-pure is the explicit
choice to train in bf16 throughout. The saved model keeps the checkpoint's dtype."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import minilm_dir, write_recipe, write_sentiment_files
from safetensors.torch import load_file

from llmtune import load_recipe
from llmtune.engine import training

# 20 AdamW steps at 2e-5 on a model stored in bf16: each update is below most weights' bf16 resolution, so pure
# bf16 drops it while fp32 master weights add them up. Measured on CPU, of the weight entries outside the embeddings:
# BERT 64% mixed vs 31% pure, Llama 80% vs 30% (pure bf16 still moves biases and norms near 0, fine in bf16).
STEPS = ("training.max_steps=20", "training.learning_rate=2e-5", "training.warmup_ratio=0", "training.batch_size=4")
QUIET = ("data.validation=null", "data.test=null", "training.log_every_n_steps=5")


@pytest.fixture(scope="module")
def bf16_bert(tmp_path_factory):
    """A tiny BERT stored in bf16, as most checkpoints on the hub are."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("bf16-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    BertModel(config).to(torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bf16_llama(tiny_llama, tmp_path_factory):
    """conftest's tiny Llama (a decoder), stored in bf16."""
    import shutil

    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("bf16-llama")
    for file in tiny_llama.iterdir():
        if "token" in file.name or file.name.endswith((".txt", ".jinja")):
            shutil.copy(file, path / file.name)
    LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(path)
    return path


def train_and_inspect(recipe_path, monkeypatch, *overrides):
    """Train; returns the result and, as they were at the end of the loop, the trained parameters' dtypes and
    the optimizer state's."""
    seen = {}
    fit = training.fit

    def recording_fit(run, state):
        state = fit(run, state)
        seen["params"] = {n: p.dtype for n, p in run.model.named_parameters() if p.requires_grad}
        seen["frozen"] = {n: p.dtype for n, p in run.model.named_parameters() if not p.requires_grad}
        seen["moments"] = {t.dtype for s in run.optimizer.state.values() for t in s.values() if t.numel() > 1}
        return state

    monkeypatch.setattr(training, "fit", recording_fit)
    recipe = load_recipe(recipe_path, [*QUIET, *overrides])
    return training.train(recipe, echo=lambda *a: None), seen


def changed_share(before: dict, after_dir) -> float:
    """The share of the checkpoint's weight entries outside the embedding tables (where only the rows of the few
    tokens in the data get gradients) that training changed, read at bf16 resolution."""
    after = load_file(after_dir / "model.safetensors")
    changed = total = 0
    before = {name: tensor for name, tensor in before.items() if "embed" not in name and "lm_head" not in name}
    for name, trained in after.items():
        # A task model's names may add the base model's prefix ("bert.") to the checkpoint's.
        initial = before.get(name, before.get(name.split(".", 1)[-1]))
        if initial is not None and initial.is_floating_point():
            changed += (trained.to(torch.bfloat16) != initial.to(torch.bfloat16)).sum().item()
            total += initial.numel()
    assert total > 0.9 * sum(t.numel() for t in before.values())
    return changed / total


def stored(path) -> dict:
    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("model", ["bf16_bert", "bf16_llama"])
def test_mixed_bf16_keeps_fp32_master_weights_and_saves_the_checkpoint_dtype(model, request, tmp_path, monkeypatch):
    path = request.getfixturevalue(model)
    recipe = write_recipe(tmp_path / "r.yaml", path, write_sentiment_files(tmp_path))
    before = stored(path)
    assert {t.dtype for t in before.values()} == {torch.bfloat16}
    mixed, seen = train_and_inspect(recipe, monkeypatch, *STEPS, "training.precision=bf16", f"output_dir={tmp_path}/m")
    assert set(seen["params"].values()) == {torch.float32}
    assert seen["moments"] == {torch.float32}
    pure, seen_pure = train_and_inspect(
        recipe, monkeypatch, *STEPS, "training.precision=bf16-pure", f"output_dir={tmp_path}/p"
    )
    assert set(seen_pure["params"].values()) == {torch.bfloat16}
    assert seen_pure["moments"] == {torch.bfloat16}
    # The saved model is stored as the checkpoint was, under either precision.
    for result in (mixed, pure):
        assert {t.dtype for t in stored(result.run_dir).values()} == {torch.bfloat16}
    mixed_share, pure_share = changed_share(before, mixed.run_dir), changed_share(before, pure.run_dir)
    assert mixed_share > 0.5 and mixed_share > 1.7 * pure_share, (mixed_share, pure_share)
    assert mixed.metrics["train"]["precision"] == "bf16-mixed"
    assert pure.metrics["train"]["precision"] == "bf16-pure"


def test_checkpoints_hold_the_fp32_master_weights(bf16_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", bf16_bert, write_sentiment_files(tmp_path))
    result, _ = train_and_inspect(
        recipe, monkeypatch, "training.max_steps=4", "training.precision=bf16", "checkpointing.every_n_steps=4"
    )
    saved = load_file(result.run_dir / "checkpoints" / "step-4" / "trainable.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_fp32_checkpoint_saves_fp32(tiny_bert, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    result, seen = train_and_inspect(recipe, monkeypatch, "training.max_steps=2", "training.precision=bf16-pure")
    assert set(seen["params"].values()) == {torch.bfloat16}
    assert {t.dtype for t in stored(result.run_dir).values()} == {torch.float32}


def test_lora_on_a_bf16_base_trains_fp32_adapters_over_the_bf16_base(bf16_llama, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", bf16_llama, write_sentiment_files(tmp_path))
    result, seen = train_and_inspect(
        recipe, monkeypatch, "training.max_steps=2", "training.precision=bf16", "method.type=lora"
    )
    assert set(seen["params"].values()) == {torch.float32}
    assert set(seen["frozen"].values()) == {torch.bfloat16}
    adapter = load_file(result.run_dir / "adapter_model.safetensors")
    assert any("lora_A" in name for name in adapter)
    assert json.loads((result.run_dir / "metrics.json").read_text())["train"]["precision"] == "bf16-mixed"
