"""Real learning: the real MiniLM checkpoint on real SST-2 sentences, and the shipped quickstart recipe.

These take minutes on 2 CPU cores; they are marked slow (`pytest -m "not slow"` skips them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import RECIPES, ROOT

from llmtune import evaluate, load_recipe, predict, train


def sst2_overrides(sst2, *extra: str) -> list[str]:
    return [
        f"data.train.path={sst2 / 'train.tsv'}",
        "data.train.max_samples=4000",
        f"data.validation={sst2 / 'validation.tsv'}",
        "data.test=null",
        "task.text_column=sentence",
        "task.label_names=null",
        "training.epochs=1",
        "training.batch_size=32",
        *extra,
    ]


@pytest.mark.slow
def test_full_finetuning_learns_sst2(sst2, tmp_path):
    """The sentiment recipe as shipped (2 epochs, learning rate 1e-4, batch 16) on the first 1,000 SST-2 sentences,
    issue #34's small-data setting: dev accuracy over seeds 1-5 was 0.7844/0.7878/0.7775/0.8028/0.7878 (mean
    0.7881, std 0.0092; `bash benchmarks/seed_study.sh sst2`). The threshold sits 1.75 points (about 2 standard
    deviations) under the lowest seed; the full 67k-sentence epoch reaches 0.9025."""
    overrides = [
        f"data.train.path={sst2 / 'train.tsv'}",
        "data.train.max_samples=1000",
        f"data.validation={sst2 / 'validation.tsv'}",
        "data.test=null",
        "task.text_column=sentence",
        "task.label_names=null",
        "evaluation.every_n_steps=null",
        "checkpointing.at_epoch_end=false",
    ]
    result = train(load_recipe(RECIPES / "sentiment.yaml", overrides), output_dir=tmp_path / "full", echo=None)
    assert result.metrics["validation"]["num_examples"] == 872
    assert result.metrics["validation"]["accuracy"] >= 0.76


@pytest.mark.slow
def test_lora_learns_sst2_and_reloads_with_plain_peft(sst2, minilm_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe = load_recipe(
        RECIPES / "sentiment.yaml",
        sst2_overrides(sst2, "method.type=lora", "method.r=16", "method.alpha=32", "training.learning_rate=5e-4"),
    )
    result = train(recipe, output_dir=tmp_path / "lora", echo=lambda *a: None)
    # Over seeds 1-5 on these 4,000 sentences 0.7706/0.7833/0.7683/0.7775/0.7672 (mean 0.7734, std 0.0068;
    # `bash benchmarks/learning_seeds.sh lora-sst2`), 0.7718 at the recipe's seed 42 that the test runs; 0.8716 after
    # the full 67k-sentence epoch. The threshold sits 1.7 points (2.5 standard deviations) under the lowest seed, far
    # above the 0.5 of a model that learned nothing.
    assert result.metrics["validation"]["accuracy"] >= 0.75

    run_dir = result.run_dir
    assert not (run_dir / "model.safetensors").exists()
    assert (run_dir / "adapter_model.safetensors").stat().st_size < 5_000_000
    saved = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()][:64]
    sentences = [row["inputs"]["sentence"] for row in saved]

    # Without llmtune: the base checkpoint, the adapter (with its classification head) and the tokenizer.
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    model = PeftModel.from_pretrained(base, run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    with torch.no_grad():
        probabilities = model(
            **tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
        ).logits.softmax(-1)
    label_names = load_recipe(run_dir / "recipe.yaml").task.label_names  # resolved from the data: ["0", "1"]
    assert [label_names[i] for i in probabilities.argmax(-1).tolist()] == [row["predicted"] for row in saved]

    ours = predict(run_dir, sentences)
    expected = torch.tensor([[row["probabilities"][name] for name in label_names] for row in ours])
    assert torch.allclose(probabilities, expected, atol=1e-5)


@pytest.mark.slow
def test_quickstart_recipe_end_to_end(tmp_path):
    """The README's main command, as a user runs it from the repository root. HF_HUB_OFFLINE is not
    set: on a machine without hub access the model must come from the offline package."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    command = [sys.executable, "-m", "llmtune", "train", "recipes/sentiment.yaml", "--output", str(tmp_path / "run")]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    test_line = next(line for line in finished.stdout.splitlines() if line.startswith("test: "))
    for metric in ("accuracy=", "macro_f1=", "cross_entropy="):
        assert metric in test_line
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Over seeds 1-5 test accuracy 0.91/0.91/0.94/0.95/0.91 (`bash benchmarks/learning_seeds.sh quickstart`; the
    # test split holds 100 sentences, so one sentence is a point): 5 points under the lowest seed.
    assert metrics["test"]["accuracy"] >= 0.86
    assert "Traceback" not in finished.stderr


@pytest.mark.slow
def test_bert2bert_from_minilm_learns_to_translate_multi30k(minilm_path, tmp_path):
    """BERT2BERT warm-started from MiniLM (encoder and decoder), German -> English: MiniLM's uncased vocabulary
    strips accents, so English is the side it can write. A short training must cut the validation cross-entropy
    to under half the untrained model's and raise BLEU on 200 validation sentences from nothing to at least 0.5."""
    from conftest import SHARED_DATA

    multi30k = SHARED_DATA / "multi30k"

    def parallel(split: str, samples: int) -> str:
        return (
            f"{{parallel: {{de: {multi30k / (split + '.de')}, en: {multi30k / (split + '.en')}}}, "
            f"max_samples: {samples}}}"
        )

    steps = int(os.environ.get("LLMTUNE_B2B_STEPS", "60"))
    settings = [
        f"model.name={minilm_path}",
        f"model.decoder={minilm_path}",
        f"data.train={parallel('train', 4000)}",
        f"data.validation={parallel('val', 200)}",
        "data.test=null",
        f"training.max_steps={steps}",
        "training.batch_size=16",
        "training.eval_batch_size=50",
        f"training.learning_rate={os.environ.get('LLMTUNE_B2B_LR', '3e-4')}",
        "training.warmup_ratio=0.1",
        "training.max_length=40",
        "task.max_target_length=40",
        "task.num_beams=1",
        "task.max_new_tokens=24",
        f"evaluation.every_n_steps={steps}",
        "evaluation.metric_for_best=null",
        "checkpointing.at_epoch_end=false",
    ]
    recipe = load_recipe(RECIPES / "translation.yaml", settings)
    before, _ = evaluate(
        RECIPES / "translation.yaml", split="validation", overrides=settings
    )  # the model training starts from
    result = train(recipe, output_dir=tmp_path / "b2b", echo=print)
    after = result.metrics["validation"]
    print("untrained:", before, "\ntrained:", after)
    assert after["num_examples"] == 200
    # Untrained (seed 42): cross-entropy 11.24, BLEU 0.01. Trained, over seeds 1-5 (`bash
    # benchmarks/learning_seeds.sh bert2bert`): cross-entropy 4.32-4.37 (0.38-0.39 of the untrained; std 0.016) and
    # BLEU 1.28-2.63 (60 steps teach it a generic English sentence, not yet a translation). The bounds sit about
    # 0.7 nats and 0.8 BLEU (1.5 standard deviations) beyond the worst seed.
    assert after["cross_entropy"] <= 0.45 * before["cross_entropy"]
    assert after["bleu"] >= 0.5 > before["bleu"]
    generated = [
        row["predicted"]
        for row in predict(result.run_dir, ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."])
    ]
    assert all(generated), generated
