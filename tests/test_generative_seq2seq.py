"""Summarization and translation with decoder-only (GPT-style) models: `task.generative: true` turns the
source into a prompt and the target into its completion. The built-in -gpt recipes run on the tiny GPT-2 /
Llama fixtures and the shared data; bad input; a real learning test with SmolLM2-135M on Multi30k."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import RECIPES, SHARED_DATA
from test_bad_input import assert_user_error

from llmtune import load_recipe
from llmtune.common.errors import Notice

MULTI30K = SHARED_DATA / "multi30k"
SCITLDR = SHARED_DATA / "scitldr"
GERMAN = (MULTI30K / "train.de").read_text(encoding="utf-8").splitlines()[:2]


def parallel(split: str, samples: int) -> str:
    """A Multi30k split as a `data.SPLIT` override value: line-aligned German and English files."""
    return (
        f"{{parallel: {{de: {MULTI30K / (split + '.de')}, en: {MULTI30K / (split + '.en')}}}, max_samples: {samples}}}"
    )


def run_args(settings: list[str]) -> list[str]:
    return [arg for item in settings for arg in ("--set", item)]


def translation_settings(model, run, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.train={parallel('train', 48)}",
        f"data.validation={parallel('val', 8)}",
        f"data.test={parallel('test_2016_flickr', 8)}",
        "training.epochs=3",
        "training.batch_size=8",
        "training.learning_rate=3e-3",
        "training.log_every_n_steps=2",
        "evaluation.every_n_steps=null",
        "method.target_modules=null",
        "task.max_new_tokens=8",
        f"output_dir={run}",
        *extra,
    ]


def summarization_settings(model, run, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.train={{path: {SCITLDR / 'train.jsonl'}, max_samples: 24}}",
        f"data.validation={{path: {SCITLDR / 'dev.jsonl'}, max_samples: 4}}",
        f"data.test={{path: {SCITLDR / 'test.jsonl'}, max_samples: 4}}",
        "training.epochs=3",
        "training.batch_size=4",
        "training.learning_rate=3e-3",
        "training.max_length=192",
        "training.log_every_n_steps=2",
        "method.target_modules=null",
        "task.max_source_length=96",
        "task.max_target_length=48",
        "task.max_new_tokens=8",
        f"output_dir={run}",
        *extra,
    ]


def training_losses(run) -> list[float]:
    return [
        entry["loss"]
        for entry in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
        if "split" not in entry
    ]


def read_predictions(run) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def zero_shot_cross_entropy(cli, recipe, args, tmp_path) -> float:
    """The test split's cross-entropy of the recipe's model before any training (`llmtune eval RECIPE`)."""
    code, _, err = cli("eval", recipe, "--split", "test", *args, "--output", tmp_path / "zero-shot.json")
    assert code == 0, err
    return json.loads((tmp_path / "zero-shot.json").read_text())["cross_entropy"]


# LoRA's few adapter weights need a high learning rate to move a random 32-wide model within a few steps.
@pytest.mark.parametrize(
    "name, extra",
    [("tiny_gpt2", ("method={type: full}",)), ("tiny_llama", ("task.packing=false", "training.learning_rate=3e-2"))],
)
def test_translation_gpt_recipe_trains_evaluates_and_predicts(name, extra, cli, tmp_path, request):
    model = request.getfixturevalue(name)
    run = tmp_path / "run"
    args = run_args(translation_settings(model, run, *extra))
    code, out, err = cli("validate", RECIPES / "translation-gpt.yaml", *args)
    assert code == 0, err
    code, out, err = cli("train", RECIPES / "translation-gpt.yaml", *args)
    assert code == 0, err
    losses = training_losses(run)
    # Learning, not batch-to-batch noise: the held-out cross-entropy (deterministic) fell below the untrained
    # model's, by the margin each method reaches here (full 6.01 -> 5.49; LoRA 6.01 -> 5.92 nats: its adapters move
    # a random 32-wide model little).
    before = zero_shot_cross_entropy(cli, RECIPES / "translation-gpt.yaml", args, tmp_path)
    after = json.loads((run / "metrics.json").read_text())["test"]["cross_entropy"]
    assert after < before - (0.3 if "full" in extra[0] else 0.04), (before, after, losses)
    test_line = next(line for line in out.splitlines() if line.startswith("test: "))
    assert "signature=BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in test_line
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert set(metrics) == {
        "num_examples",
        "runtime_s",
        "bleu",
        "chrf",
        "cross_entropy",
        "perplexity",
        "distinct_outputs",
        "signature",
        "num_target_tokens",
    }
    assert metrics["num_examples"] == 8 and metrics["perplexity"] == pytest.approx(math.exp(metrics["cross_entropy"]))
    # The same predictions.jsonl as the encoder-decoder path.
    predictions = read_predictions(run)
    assert len(predictions) == 8
    assert set(predictions[0]) == {"index", "inputs", "reference", "predicted", "score", "metrics"}
    assert (
        predictions[0]["inputs"]["de"] == (MULTI30K / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[0]
    )
    code, out, err = cli("eval", run, "--split", "test")
    assert code == 0, err
    assert f"bleu={metrics['bleu']:.4f}" in out and f"cross_entropy={metrics['cross_entropy']:.4f}" in out
    code, out, err = cli("predict", run, "--text", GERMAN[0])
    assert code == 0, err
    predicted = json.loads(out)
    assert predicted["inputs"] == {"de": GERMAN[0]} and isinstance(predicted["predicted"], str)
    assert_plain_generation_matches(run, GERMAN)


def test_eval_of_a_recipe_scores_the_model_training_starts_from(cli, tiny_gpt2, tmp_path):
    """`llmtune eval RECIPE` is the zero-shot baseline: the recipe's own model, prompt and decoding,
    nothing trained or written; `skip` + `max_samples` take a held-out slice of one file."""
    run = tmp_path / "run"
    test_slice = (
        f"data.test={{parallel: {{de: {MULTI30K / 'test_2016_flickr.de'}, "
        f"en: {MULTI30K / 'test_2016_flickr.en'}}}, skip: 3, max_samples: 4}}"
    )
    args = run_args(translation_settings(tiny_gpt2, run, "method={type: full}", test_slice))
    code, out, err = cli(
        "eval", RECIPES / "translation-gpt.yaml", "--split", "test", *args, "--output", tmp_path / "zero-shot.json"
    )
    assert code == 0, err
    assert not run.exists()
    zero_shot = json.loads((tmp_path / "zero-shot.json").read_text())
    sources = [
        json.loads(line)["inputs"]["de"] for line in (tmp_path / "zero-shot.predictions.jsonl").read_text().splitlines()
    ]
    assert sources == (MULTI30K / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[3:7]
    assert zero_shot["num_examples"] == 4 and {"bleu", "chrf", "cross_entropy"} <= set(zero_shot)
    code, out, err = cli("train", RECIPES / "translation-gpt.yaml", *args)
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["test"]["cross_entropy"] < zero_shot["cross_entropy"]
    result = cli("eval", RECIPES / "translation-gpt.yaml", "--split", "test", *args, "--set", "data.test.skip=1000")
    assert_user_error(result, "skip: 1000 leaves no rows (the split has 1000); expected fewer than 1000")


def assert_plain_generation_matches(run, texts: list[str]) -> None:
    """The saved run loads with plain transformers (and peft) and greedily writes what llmtune's predict writes."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune import predict

    predicted = [row["predicted"] for row in predict(run, texts)]
    loader = AutoPeftModelForCausalLM if (run / "adapter_config.json").is_file() else AutoModelForCausalLM
    model = loader.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    task = load_recipe(run / "recipe.yaml").task
    plain = []
    with torch.inference_mode():
        for text in texts:  # one at a time, no padding
            prompt = task.prompt_template[: task.prompt_template.index("{completion}")].format(de=text).rstrip(" ")
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=task.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            plain.append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert predicted == plain


def test_summarization_gpt_recipe_with_chat_template_and_packing(cli, tiny_llama, tmp_path):
    """SciTLDR: a list of sentences as the source (joined into the prompt), several references per dev/test example."""
    run = tmp_path / "run"
    settings = summarization_settings(
        tiny_llama, run, "task.chat_template=true", "task.packing=true", "training.learning_rate=3e-2"
    )
    args = run_args(settings)
    code, out, err = cli("validate", RECIPES / "summarization-gpt.yaml", *args)
    assert code == 0, err
    code, out, err = cli("train", RECIPES / "summarization-gpt.yaml", *args)
    assert code == 0, err
    losses = training_losses(run)
    before = zero_shot_cross_entropy(cli, RECIPES / "summarization-gpt.yaml", args, tmp_path)
    after = json.loads((run / "metrics.json").read_text())["test"]["cross_entropy"]
    assert after < before - 0.04, (before, after, losses)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {
        "num_examples",
        "runtime_s",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "cross_entropy",
        "perplexity",
        "distinct_outputs",
        "num_target_tokens",
    }
    predictions = read_predictions(run)
    rows = [json.loads(line) for line in (SCITLDR / "test.jsonl").read_text().splitlines()[:4]]
    assert [p["reference"] for p in predictions] == [
        row["target"] if len(row["target"]) > 1 else row["target"][0] for row in rows
    ]
    assert predictions[0]["inputs"]["source"] == " ".join(part.strip() for part in rows[0]["source"])
    assert metrics["test"]["rougeL"] == pytest.approx(sum(p["metrics"]["rougeL"] for p in predictions) / 4, abs=1e-3)
    code, out, err = cli("eval", run, "--split", "test")
    assert code == 0, err
    assert f"rougeL={metrics['test']['rougeL']:.4f}" in out
    code, out, err = cli("predict", run, "--text", "We propose a new method for training neural networks. It is fast.")
    assert code == 0, err
    assert set(json.loads(out)) == {"index", "inputs", "predicted", "score"}


def test_cross_entropy_is_per_completion_token_and_matches_the_training_loss(tiny_llama):
    """Evaluation's cross-entropy counts exactly the target tokens + EOS (not the prompt), as the training loss does."""
    import datasets

    from llmtune.inference.batches import PadCollator
    from llmtune.models.loading import load_model, load_tokenizer
    from llmtune.models.sources import Checkpoint
    from llmtune.tasks import create
    from llmtune.tasks.seq2seq import TranslationOptions

    task = create(TranslationOptions(type="translation", source_lang="de", target_lang="en", generative=True))
    assert task.template == "Translate German to English:\n{de}\nEnglish: {completion}"
    checkpoint = Checkpoint("tiny", str(tiny_llama), "local directory")
    tokenizer = load_tokenizer(checkpoint)
    task.setup(None, tokenizer)
    model, _ = load_model(checkpoint, task.auto_class, pad_token_id=tokenizer.pad_token_id)
    rows = [
        {"de": "Ein Hund läuft.", "en": "A dog runs."},
        {"de": "Zwei Männer sitzen auf einer Bank im Park.", "en": "Two men sit."},
    ]
    features = task.preprocess(datasets.Dataset.from_list(rows), tokenizer, 64)
    examples = [
        {k: features[k][i] for k in ("input_ids", "attention_mask", "labels", "prompt_length")} for i in range(2)
    ]
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    with torch.inference_mode():
        nll, count = task.family.target_losses(model.eval(), batch)
        loss = task.loss(model, batch)
        left_nll, _ = task.family.target_losses(model, PadCollator(tokenizer.pad_token_id, "left")(examples))
        alone = [
            task.family.target_losses(model, PadCollator(tokenizer.pad_token_id)([example]))[0] for example in examples
        ]
    assert count.tolist() == [
        len(tokenizer(" " + row["en"], add_special_tokens=False)["input_ids"]) + 1 for row in rows
    ]
    torch.testing.assert_close(nll.sum() / count.sum(), loss)
    # Whatever the padding side: each example's NLL is the one it has alone.
    torch.testing.assert_close(left_nll, torch.cat(alone), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, torch.cat(alone), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- bad input (one line, exit code 2, nothing written)


@pytest.mark.parametrize(
    "recipe, sets, expected",
    [
        (
            "translation-gpt",
            ['task.prompt_template="Caption of {image}: {de}\\nEnglish: {completion}"'],
            ["task.prompt_template references column 'image'", "available columns: de, en"],
        ),
        (
            "translation-gpt",
            ['task.prompt_template="Translate: {de}\\nEnglish:"'],
            ["task.prompt_template", "has no {completion} slot"],
        ),
        (
            "summarization-gpt",
            ['task.prompt_template="{completion} summarizes {source}"'],
            ["task.prompt_template", "slot must come once, at the end"],
        ),
        (
            "summarization-gpt",
            ['task.prompt_template="Venue: {venue}\\n{source}\\nTL;DR: {completion}"'],
            [
                "task.prompt_template references column 'venue'",
                "available columns: source, source_labels, rouge_scores, paper_id, target, title",
            ],
        ),
        (
            "summarization-gpt",
            ["task.prefix='summarize: '"],
            ["task.prefix does not apply to generative summarization"],
        ),
        (
            "translation-gpt",
            ["task.no_repeat_ngram_size=3"],
            ["task.no_repeat_ngram_size does not apply to generative translation"],
        ),
        ("translation.yaml", ["task.packing=true"], ["task.packing applies to generative translation only"]),
    ],
)
def test_bad_generative_input_stops_with_one_line(recipe, sets, expected, cli, tiny_gpt2, tmp_path):
    recipe = RECIPES / (recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    data = (
        [f"data.train={parallel('train', 8)}"]
        if "translation" in recipe.name
        else [f"data.train={SCITLDR / 'dev.jsonl'}", "data.train.max_samples=8"]
    )
    run = tmp_path / "run"
    args = run_args(
        [f"model.name={tiny_gpt2}", *data, "data.validation=null", "data.test=null", f"output_dir={run}", *sets]
    )
    message = assert_user_error(cli("validate", recipe, *args), *expected)
    assert assert_user_error(cli("train", recipe, *args), *expected) == message
    assert not run.exists()


def test_tokenizer_without_eos_stops_generative_translation(cli, tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "no-eos"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.eos_token = tokenizer.bos_token = None
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(model)
    for file in tiny_llama.iterdir():
        if file.name in ("config.json", "model.safetensors", "generation_config.json"):
            (model / file.name).write_bytes(file.read_bytes())
    args = run_args(
        [
            f"model.name={model}",
            f"data.train={parallel('train', 8)}",
            "data.validation=null",
            "data.test=null",
            "evaluation.metric_for_best=null",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    assert_user_error(
        cli("train", RECIPES / "translation-gpt.yaml", *args), f"the tokenizer of {model} has no EOS token"
    )
    assert not (tmp_path / "run").exists()


def test_builtin_gpt_recipes_validate_as_shipped():
    for name, task_type in (("summarization-gpt", "summarization"), ("translation-gpt", "translation")):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert recipe.model.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and recipe.method.type == "lora"
        assert recipe.task.type == task_type and recipe.task.generative and recipe.data.train.hub


# --------------------------------------------------------------------------- real weights: SmolLM2-135M-Instruct


def smollm2_multi30k_settings(model, sentences: int, steps: int = 24) -> list[str]:
    """The SmolLM2 learning test's overrides of recipes/translation-gpt.yaml (benchmarks/multi30k_smollm2_seeds.py
    runs them at several seeds): 16 * steps training pairs, the first `sentences` validation ones."""
    return [
        f"model.name={model}",
        f"data.train={parallel('train', 16 * steps)}",
        f"data.validation={parallel('val', sentences)}",
        "data.test=null",
        f"training.max_steps={steps}",
        "training.batch_size=16",
        "training.eval_batch_size=50",
        "training.learning_rate=1e-3",
        "training.warmup_ratio=0.1",
        "training.max_length=96",
        "task.max_target_length=40",
        "task.max_new_tokens=40",
        "task.num_beams=1",
        f"evaluation.every_n_steps={steps}",
        "evaluation.metric_for_best=null",
        "checkpointing.at_epoch_end=false",
    ]


@pytest.mark.slow
def test_smollm2_lora_learns_to_translate_multi30k(smollm2_path, tmp_path):
    """Generative translation, German -> English: SmolLM2-135M + LoRA on 384 Multi30k pairs (24 steps) must translate
    the first 100 validation sentences far better than the zero-shot model does with the same prompt and decoding.

    The zero-shot figures are the checkpoint's, not llmtune's training's, so they were measured once rather than
    in every run (71 s of generation here): BLEU 2.21, chrF 21.22, cross-entropy 4.272. Trained at seeds 1/2/3:
    BLEU 8.56/9.56/9.21, chrF 28.56/28.94/28.99, cross-entropy 2.434/2.450/2.435 (`python
    benchmarks/multi30k_smollm2_seeds.py zeroshot,1,2,3 100 runs/mt-seeds`). Each threshold sits 2.5 points under
    the lowest seed (cross-entropy: 0.55 over the highest) and far from zero-shot."""
    from llmtune import predict, train

    settings = smollm2_multi30k_settings(smollm2_path, sentences=100)
    result = train(load_recipe(RECIPES / "translation-gpt.yaml", settings), output_dir=tmp_path / "run", echo=print)
    after = result.metrics["validation"]
    assert after["num_examples"] == 100
    assert after["bleu"] > 6 and after["chrf"] > 26 and after["cross_entropy"] < 3.0, after
    generated = [row["predicted"] for row in predict(result.run_dir, ["Ein Mann fährt Fahrrad."])]
    assert generated[0], generated


def test_a_model_that_repeats_itself_is_reported(cli, tiny_gpt2, tmp_path):
    """A model that writes one word over and over whatever its input: the evaluation says so in one warning line
    (with the share) and metrics.json's distinct_outputs shows it."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_gpt2), GPT2LMHeadModel.from_pretrained(tiny_gpt2)
    (word,) = tokenizer.encode(" the")
    with torch.no_grad():  # the last layer norm now outputs the same vector, close to " the"'s embedding, always
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(10 * model.transformer.wte.weight[word])
    parrot = tmp_path / "parrot"
    model.save_pretrained(parrot)
    tokenizer.save_pretrained(parrot)
    run = tmp_path / "run"
    args = run_args(translation_settings(parrot, run, "method={type: full}", f"data.test={parallel('val', 12)}"))
    recipe = RECIPES / "translation-gpt.yaml"
    # Recorded as the warning it is (the CLI prints each as one `warning:` line: tests/test_hostile_input.py).
    with pytest.warns(Notice) as caught:
        code, out, err = cli("eval", recipe, "--split", "test", *args, "--output", tmp_path / "m.json")
    assert code == 0, err
    warned = [str(warning.message) for warning in caught if "generated outputs" in str(warning.message)]
    assert warned == [
        "evaluation: 100% of the 12 generated outputs are the same text ('the the the the the the the the'); "
        "the model is not using its input yet"
    ]
    assert "distinct_outputs=0.0833" in out
    assert json.loads((tmp_path / "m.json").read_text())["distinct_outputs"] == round(1 / 12, 4)
