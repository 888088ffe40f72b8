"""Every method trains the task head and saves a run that plain transformers / peft load back."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_recipe

from llmtune import load_recipe, predict, train


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prefix_tuning", "lora+use_dora", "lora+use_rslora"])
def test_method_trains_and_reloads(method, tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    method, _, flag = method.partition("+")
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files),
        [f"method.type={method}", "training.learning_rate=1e-3", *([f"method.{flag}=true"] if flag else [])],
    )
    result = train(recipe, echo=lambda *a: None)
    run_dir = result.run_dir
    if flag:  # the variant is in the adapter's config, so plain peft rebuilds it
        assert json.loads((run_dir / "adapter_config.json").read_text())[flag] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test", "leakage"}  # the fixture's splits hold the same rows
    assert {"accuracy", "macro_f1", "cross_entropy"} <= set(metrics["test"])

    ours = predict(run_dir, ["a wonderful, moving film", "dull and far too long"])
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if method == "full":
        model = AutoModelForSequenceClassification.from_pretrained(run_dir)
    else:
        from peft import PeftModel

        assert (run_dir / "adapter_model.safetensors").exists() and not (run_dir / "model.safetensors").exists()
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        model = PeftModel.from_pretrained(base, run_dir)
    model.eval()
    batch = tokenizer(["a wonderful, moving film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**batch).logits.softmax(-1)
    expected = [[row["probabilities"][name] for name in ("negative", "positive")] for row in ours]
    assert torch.allclose(probabilities, torch.tensor(expected), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method, learning_rate", [("lora", "1e-2"), ("ia3", "3e-2"), ("prefix_tuning", "3e-2")])
def test_the_adapter_itself_learns(method, learning_rate, minilm_path, sentiment_files, tmp_path):
    """MiniLM's new head learns on its own; the adapter must add to it. Against a run whose adapter is all but
    frozen (learning_rate 1e-9; the head at head_learning_rate in both), training the adapter too must end with a
    lower held-out cross-entropy, and its saved weights must differ from the frozen run's (same seed, so the same
    initial values)."""
    from safetensors.torch import load_file

    def run(adapter_lr: str, name: str):
        recipe = load_recipe(
            write_recipe(tmp_path / f"{name}.yaml", minilm_path, sentiment_files),
            [
                f"method.type={method}",
                f"training.learning_rate={adapter_lr}",
                "training.head_learning_rate=1e-3",
                "training.epochs=4",
                f"output_dir={tmp_path / name}",
            ],
        )
        return train(recipe, echo=lambda *a: None)

    frozen, trained = run("1e-9", "frozen"), run(learning_rate, "trained")
    before, after = frozen.metrics["test"]["cross_entropy"], trained.metrics["test"]["cross_entropy"]
    assert after < before - MARGINS[method], (before, after)
    initial, final = (load_file(result.run_dir / "adapter_model.safetensors") for result in (frozen, trained))
    moved = {name: (final[name] - initial[name]).abs().max().item() for name in final if "classifier" not in name}
    assert moved and min(moved.values()) > 1e-4, moved


# About half of what each method gains over the frozen-adapter run here (LoRA 0.43, IA3 0.20, prefix 0.066 nats;
# deterministic: seeded, CPU).
MARGINS = {"lora": 0.2, "ia3": 0.1, "prefix_tuning": 0.03}


def test_an_adapter_of_a_hub_model_saves_without_peft_warnings(tiny_bert, tmp_path):
    """peft asked the hub (without a network: failed, with warnings) whether the base vocabulary was resized;
    llmtune never resizes it. The adapter names the hub id, so the lookup ran on every LoRA run of a hub model."""
    import types
    import warnings

    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.engine.saving import save_model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(target_modules=["query", "value"], task_type="SEQ_CLS"))
    recipe = types.SimpleNamespace(model=types.SimpleNamespace(name="an-org/a-hub-model"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_model(model, AutoTokenizer.from_pretrained(tiny_bert), tmp_path, recipe)
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "an-org/a-hub-model"
