"""`llmtune estimate`: peak training memory from the recipe and the model config alone, component by component,
scaling as the batch, the method, quantization and gradient checkpointing say, and near a measured peak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, write_recipe

COMPONENTS = ["weights", "autocast copies", "gradients", "optimizer", "activations", "logits"]


def estimated(recipe_path, *overrides: str):
    from llmtune.engine.estimate import estimate
    from llmtune.engine.preparation import prepare
    from llmtune.recipe import load_recipe

    return estimate(prepare(load_recipe(recipe_path, list(overrides))), measure_peak=False)


@pytest.fixture()
def bert_recipe(tiny_bert, sentiment_files, tmp_path):
    return write_recipe(tmp_path / "recipe.yaml", tiny_bert, sentiment_files)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A 2-layer Llama 256 wide with a 400-token vocabulary: its linear layers hold most of its weights."""
    import torch
    from conftest import gpt2_style_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("wide-llama")
    tokenizer = gpt2_style_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_estimate_prints_every_component_without_loading_weights(cli, bert_recipe):
    code, out, err = cli("estimate", bert_recipe)
    assert code == 0, err
    rows = {line[:18].strip(): line[18:].split() for line in out.splitlines()}
    for component in COMPONENTS:
        assert float(rows[component][0].replace(",", "")) >= 0, (component, out)
    assert float(rows["weights"][0].replace(",", "")) > 0 and "peak (estimated)" in rows
    assert "batch: 8 x 32 tokens" in out and "step time: ~" in out and "rough" in out
    code, out, err = cli("estimate", bert_recipe, "--json", "--set", "training.batch_size=4")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["components"]) == set(COMPONENTS) and result["batch_size"] == 4
    assert result["peak_bytes"] > result["components"]["weights"] > 0


def test_estimate_never_reads_the_weights(bert_recipe, tiny_bert, tmp_path):
    import shutil

    copy = tmp_path / "no-weights"
    shutil.copytree(tiny_bert, copy)
    (copy / "model.safetensors").write_bytes(b"not weights")  # loading them would fail
    result = estimated(bert_recipe, f"model.name={copy}")
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert result.total_parameters == result.trainable_parameters == loaded.num_parameters()


def test_bad_recipe_gives_one_line_and_exit_2(cli, bert_recipe):
    code, out, err = cli("estimate", bert_recipe, "--set", "training.batch_sise=4")
    assert code == 2
    assert err.count("error:") == 1 and "batch_sise" in err and "Traceback" not in err + out


def test_components_scale_with_the_batch_and_the_method(bert_recipe):
    full = estimated(bert_recipe)
    doubled = estimated(bert_recipe, "training.batch_size=16")
    assert doubled.components["activations"] == pytest.approx(2 * full.components["activations"])
    assert doubled.components["logits"] == pytest.approx(2 * full.components["logits"])
    assert doubled.components["weights"] == full.components["weights"]
    # AdamW: two float32 moments per trained parameter; LoRA trains a small share of them
    assert full.components["optimizer"] == 8 * full.trainable_parameters == 2 * full.components["weights"]
    lora = estimated(bert_recipe, "method={type: lora}")
    assert lora.components["optimizer"] < full.components["optimizer"] / 50
    assert lora.components["gradients"] < full.components["gradients"] / 50
    checkpointed = estimated(bert_recipe, "training.gradient_checkpointing=true")
    assert checkpointed.components["activations"] < 0.7 * full.components["activations"]
    assert checkpointed.step_flops > full.step_flops  # the forward pass runs twice


def test_longer_inputs_grow_attention_quadratically(bert_recipe):
    """BERT's attention dropout sends CPU attention through torch's math kernel, which keeps the s x s scores."""
    short, long = estimated(bert_recipe), estimated(bert_recipe, "training.max_length=128")
    assert long.sequence_length == 128  # the tiny BERT's position limit
    assert long.components["activations"] > 4 * short.components["activations"]


def test_language_model_logits_and_mixed_precision(wide_llama, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "lm.yaml", wide_llama, sentiment_files)
    task = "task={type: summarization, generative: true, source_column: text, target_column: label}"
    lm = estimated(recipe, task)
    assert lm.components["logits"] == 8 * 32 * 400 * (4 + 4 + 4)  # scores, log-softmax, their gradient (float32)
    bf16 = estimated(recipe, task, "training.precision=bf16")
    assert bf16.components["weights"] == lm.components["weights"]  # float32 master weights
    assert bf16.components["autocast copies"] > 0 and lm.components["autocast copies"] == 0
    assert bf16.components["activations"] < 0.6 * lm.components["activations"]


def test_four_bit_weights_are_an_eighth_of_float32(wide_llama, sentiment_files, tmp_path):
    pytest.importorskip("bitsandbytes")
    recipe = write_recipe(tmp_path / "q.yaml", wide_llama, sentiment_files, "method:\n  type: lora\n")
    plain = estimated(recipe).components["weights"]
    four_bit = estimated(recipe, "method.quantization=4bit").components["weights"]
    eight_bit = estimated(recipe, "method.quantization=8bit").components["weights"]
    # the linear weights shrink 8x (4x); the float32 embeddings and head stay, so the whole is a bit more
    assert 1 / 8 < four_bit / plain < 0.25 and 1 / 4 < eight_bit / plain < 0.35


def test_estimate_is_near_a_measured_peak(tmp_path, sentiment_files):
    """One real training run under torch's allocator accounting (benchmarks/estimate_check.py): within 30%."""
    import torch
    from conftest import minilm_dir
    from transformers import AutoTokenizer, BertConfig, BertModel

    model = tmp_path / "bert-128"
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    ).save_pretrained(model)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(model)
    long_rows = tmp_path / "long.csv"
    long_rows.write_text("text,label\n" + "".join(f'"{"a very long review " * 60}",{i % 2}\n' for i in range(64)))
    files = {"train": long_rows, "validation": long_rows, "test": long_rows}
    recipe = write_recipe(tmp_path / "m.yaml", model, files, "checkpointing: {at_epoch_end: false}\n")
    overrides = [
        "data.validation=null",
        "data.test=null",
        "training.max_steps=2",
        "training.batch_size=16",
        "training.max_length=128",
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "estimate_check.py"),
            "--one",
            str(recipe),
            "--work",
            str(tmp_path),
            "--",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = row["estimate"]["peak_bytes"] / row["measured_peak_bytes"]
    assert 0.7 < ratio < 1.3, row
