"""Small-data remedies that act per layer: layer-wise learning-rate decay (training.layer_decay) and re-initialising
the top layers (method.reinit_top_layers)."""

from __future__ import annotations

import pytest
import torch
from conftest import write_recipe, write_sentiment_files

from llmtune.common.errors import UserError
from llmtune.engine import builders, layers
from llmtune.recipe import Training


def classifier(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)


def rates(model, **training) -> dict[str, float]:
    groups = builders.parameter_groups(model, Training(learning_rate=1e-3, **training), ["classifier"])
    return {name: group["lr"] for group in groups for name in group["param_names"]}


def test_layer_decay_lowers_each_layer_below_the_top_and_leaves_the_head(tiny_bert):
    model = classifier(tiny_bert)  # 2 layers
    lr = rates(model, layer_decay=0.5, head_learning_rate=5e-3)
    assert lr["bert.encoder.layer.1.attention.self.query.weight"] == pytest.approx(1e-3)  # the top layer
    assert lr["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(5e-4)
    assert lr["bert.embeddings.word_embeddings.weight"] == pytest.approx(2.5e-4)  # lowest: decay ** layers
    assert lr["bert.pooler.dense.weight"] == pytest.approx(1e-3)
    assert lr["classifier.weight"] == pytest.approx(5e-3)  # the new head keeps its own rate
    assert set(rates(model).values()) == {1e-3}  # without decay: one rate


def test_layer_names_of_other_architectures_are_counted():
    assert layers.depth("transformer.h.3.attn.c_attn.weight", 12) == 4  # GPT-2
    assert layers.depth("model.layers.0.self_attn.q_proj.lora_A.default.weight", 30) == 1  # Llama under LoRA
    assert layers.depth("encoder.block.5.layer.0.SelfAttention.q.weight", 6) == 6  # T5: the block, not its sublayer
    assert layers.depth("transformer.wte.weight", 12) == 0 and layers.depth("model.embed_tokens.weight", 30) == 0
    assert layers.depth("score.weight", 30) == 31


def test_reinit_draws_the_top_layers_and_pooler_anew_and_keeps_the_rest(tiny_bert):
    model = classifier(tiny_bert)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    drawn = layers.reinit_top_layers(model, 1)
    assert drawn == ["bert.encoder.layer.1", "bert.pooler"]
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "bert.encoder.layer.1.attention.self.query.weight" in changed
    assert "bert.pooler.dense.weight" in changed
    assert not [name for name in changed if not name.startswith(("bert.encoder.layer.1.", "bert.pooler."))]
    # drawn as the checkpoint's own initialisation draws: BERT's normal(0, initializer_range), zero biases
    query = after["bert.encoder.layer.1.attention.self.query.weight"]
    assert query.std().item() == pytest.approx(model.config.initializer_range, rel=0.3)
    assert after["bert.encoder.layer.1.attention.self.query.bias"].abs().max() == 0


def test_reinit_more_layers_than_the_model_has_is_one_line(tiny_bert):
    with pytest.raises(UserError, match=r"reinit_top_layers: 3 layers asked, but bert.encoder.layer has 2"):
        layers.reinit_top_layers(classifier(tiny_bert), 3)


def test_a_run_says_which_layers_it_drew_anew(tiny_bert, tmp_path):
    from llmtune import load_recipe, train

    files = write_sentiment_files(tmp_path, repeat=2)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_bert, files, "method:\n  type: full\n  reinit_top_layers: 1\n")
    lines = []
    train(load_recipe(recipe, ["training.layer_decay=0.8"]), echo=lines.append)
    assert any("re-initialised (method.reinit_top_layers): bert.encoder.layer.1, bert.pooler" in line for line in lines)
