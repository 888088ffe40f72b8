"""Decoder-only (GPT-style) checkpoints: classification with GPT-2 / Llama, GGUF files, SmolLM2 learning."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES, SMOLLM2_ID, smollm2_gguf, write_recipe

from llmtune import load_recipe, models, predict, train
from llmtune.batching import PadCollator
from llmtune.recipe import ClassificationTask, ModelSpec
from llmtune.tasks.classification import Classification

TEXTS = ["a wonderful, moving film", "dull", "I loved every minute of it, truly"]


def classifier(path):
    checkpoint = models.Checkpoint(str(path), str(path), "test")
    tokenizer = models.load_tokenizer(checkpoint)
    task = Classification(ClassificationTask(type="classification", label_names=["negative", "positive"]))
    model, new_modules = models.load_model(checkpoint, task.auto_class, pad_token_id=tokenizer.pad_token_id, **task.model_kwargs())
    task.setup(model, tokenizer)
    return task, model.eval(), tokenizer, new_modules


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_pad_token_and_pooling_whatever_the_padding_side(name, request):
    path = request.getfixturevalue(name)
    task, model, tokenizer, new_modules = classifier(path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"  # the tokenizer had none
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert new_modules == ["score"]
    features = task._encode(tokenizer, TEXTS, None, 32)
    with torch.inference_mode():
        alone = [model(**PadCollator(tokenizer.pad_token_id)([feature])).logits[0] for feature in features]
        for side in ("left", "right"):
            batch = PadCollator(tokenizer.pad_token_id, side)(features)
            assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # some rows really are padded
            logits = model(**batch).logits
            for row, expected in zip(logits, alone):
                torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_decoder_classification_trains_saves_and_reloads_with_plain_transformers(method, tiny_gpt2, sentiment_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe_file = write_recipe(tmp_path / "r.yaml", tiny_gpt2, sentiment_files, f"method:\n  type: {method}\n")
    result = train(load_recipe(recipe_file, ["training.learning_rate=1e-3"]))
    run = result.run_dir
    assert result.metrics["test"]["num_examples"] == 32
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert tokenizer.pad_token == "<|endoftext|>"  # saved with the run
    if method == "lora":
        adapter = json.loads((run / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tiny_gpt2)
        assert "score" in adapter["modules_to_save"]
        base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2, pad_token_id=tokenizer.pad_token_id)
        model = PeftModel.from_pretrained(base, run).eval()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(run).eval()
        assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a wonderful, moving film", "a waste of money"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        plain = model(**batch).logits.softmax(-1)
    ours = predict(run, ["a wonderful, moving film", "a waste of money"])
    for row, probabilities in zip(ours, plain):
        assert [row["probabilities"][name] for name in ("negative", "positive")] == pytest.approx(probabilities.tolist(), abs=1e-4)
