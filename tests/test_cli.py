"""The commands a user runs after training: validate, eval (run, file, bare checkpoint), predict."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import write_recipe


@pytest.fixture()
def trained_run(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "training.learning_rate=1e-3")
    assert code == 0, err
    return tmp_path / "run"


def test_validate_reports_what_it_checked(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("validate", recipe)
    assert code == 0, err
    assert "ok" in out and "label_names: negative, positive" in out and "data.train: 32 examples" in out
    assert not (tmp_path / "run").exists()


def test_train_prints_test_metrics_and_writes_the_run(cli, tiny_bert, sentiment_files, tmp_path):
    code, out, err = cli("train", write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files))
    assert code == 0, err
    test_line = next(line for line in out.splitlines() if line.startswith("test: "))
    assert "accuracy=" in test_line and "macro_f1=" in test_line and "cross_entropy=" in test_line
    run = tmp_path / "run"
    for name in (
        "recipe.yaml",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "predictions.jsonl",
        "train_log.jsonl",
    ):
        assert (run / name).is_file(), name
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 32 and [row["index"] for row in predictions] == list(range(32))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in entry for entry in log) and any(entry.get("split") == "validation" for entry in log)


def test_eval_matches_the_metrics_of_training(cli, trained_run):
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    code, out, err = cli("eval", trained_run, "--split", "test", "--output", trained_run.parent / "eval.json")
    assert code == 0, err
    again = json.loads((trained_run.parent / "eval.json").read_text())
    assert again["num_examples"] == saved["num_examples"]
    for metric in ("accuracy", "macro_f1", "cross_entropy"):
        assert again[metric] == pytest.approx(saved[metric], abs=1e-6)


def test_eval_on_a_data_file_and_on_a_bare_checkpoint(cli, trained_run, sentiment_files, tmp_path):
    code, out, err = cli("eval", trained_run, "--data", sentiment_files["test"])
    assert code == 0, err
    assert out.startswith("data: accuracy=")
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in trained_run.iterdir():
        if file.is_file() and file.name not in ("recipe.yaml", "metrics.json", "predictions.jsonl", "train_log.jsonl"):
            shutil.copy(file, bare)
    code, out2, err = cli("eval", bare, "--data", sentiment_files["test"])
    assert code == 0, err
    assert out2 == out  # same weights, same data, same metrics


def test_a_recipes_starting_model_is_settled_before_it_loads(tiny_bert, sentiment_files, tmp_path):
    """A recipe file loads as training would start: its label names settled on the train split, and the inputs cut
    where the model's positions end (128 for tiny_bert), not at the recipe's max_length."""
    from llmtune.inference.saved import load_run

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    loaded = load_run(recipe, ["training.max_length=1000"])
    assert loaded.recipe.task.label_names == ["negative", "positive"]
    assert loaded.model.config.id2label == {0: "negative", 1: "positive"}
    assert loaded.recipe.training.max_length == 1000 and loaded.max_length == 128
    assert loaded.run_dir is None


def test_eval_unknown_split_is_a_clear_error(cli, trained_run):
    code, out, err = cli("eval", trained_run, "--split", "dev")
    assert code == 2 and "--split dev" in err and "--data FILE" in err


def test_predict_texts_and_files(cli, trained_run, tmp_path):
    code, out, err = cli("predict", trained_run, "--text", "a wonderful, moving film", "--text", "a waste of money")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["inputs"]["text"] for row in rows] == ["a wonderful, moving film", "a waste of money"]
    for row in rows:
        assert row["predicted"] in ("negative", "positive") and "reference" not in row
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert row["score"] == pytest.approx(row["probabilities"][row["predicted"]], abs=1e-6)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"text": "a wonderful, moving film"}\n{"text": "a waste of money"}\n')
    code, out, err = cli("predict", trained_run, "--input", inputs, "--output", tmp_path / "preds.jsonl")
    assert code == 0, err
    assert [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()] == rows


def test_predict_without_input_is_a_usage_error(cli, trained_run):
    code, out, err = cli("predict", trained_run)
    assert code == 2 and "--text" in err


def test_text_pairs(cli, minilm_path, tmp_path):
    """The label depends on the second text alone (every premise is the same), so a run learns it only if
    text_pair_column reaches the model in training and evaluation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [("a cat sits", "an animal sits", "entailment"), ("a cat sits", "nobody sits", "contradiction")] * 8
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(
            "".join(json.dumps({"premise": p, "hypothesis": h, "label": label}) + "\n" for p, h, label in rows)
        )
    recipe = write_recipe(tmp_path / "r.yaml", minilm_path, files)  # a random tiny model hardly tells texts apart
    pair = ["--set", "task.text_column=premise", "--set", "task.text_pair_column=hypothesis"]
    code, out, err = cli("train", recipe, *pair, "--set", "training.epochs=4", "--set", "training.learning_rate=1e-4")
    assert code == 0, err
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] == 1.0
    # The saved predictions are plain transformers' on the encoded pair.
    saved = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:2]
    tokenizer, model = AutoTokenizer.from_pretrained(run), AutoModelForSequenceClassification.from_pretrained(run)
    batch = tokenizer([p for p, *_ in rows[:2]], [h for _, h, _ in rows[:2]], padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model.eval()(**batch).logits.softmax(-1)
    names = [model.config.id2label[i] for i in range(2)]
    assert torch.allclose(plain, torch.tensor([[r["probabilities"][n] for n in names] for r in saved]), atol=1e-5)

    code, out, err = cli("predict", run, "--input", files["test"])
    assert code == 0, err
    row = json.loads(out.splitlines()[0])
    assert row["inputs"] == {"premise": "a cat sits", "hypothesis": "an animal sits"}
    assert row["predicted"] == row["reference"] == "entailment"
    pairs = [
        "--text",
        "a cat sits",
        "--text-pair",
        "an animal sits",
        "--text",
        "a cat sits",
        "--text-pair",
        "nobody sits",
    ]
    code, out, err = cli("predict", run, *pairs)
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["inputs"]["hypothesis"] == "an animal sits" and second["inputs"]["hypothesis"] == "nobody sits"
    assert (first["predicted"], second["predicted"]) == ("entailment", "contradiction")


COMMANDS = ["validate", "train", "eval", "predict", "sweep", "push", "merge", "export", "serve", "report", "compare"]


@pytest.mark.parametrize(
    "command, expected",
    [
        ([], [*COMMANDS, "recipes", "init"]),
        (["validate"], ["recipe", "--set"]),
        (["train"], ["recipe", "--set", "--output", "--overwrite", "--resume"]),
        (["eval"], ["--split", "--data", "--output", "--set"]),
        (["predict"], ["--text", "--text-pair", "--question", "--context", "--input", "--output"]),
    ],
)
def test_help_explains_each_command(cli, command, expected):
    code, out, err = cli(*command, "--help")
    assert code == 0, err
    words = set(re.findall(r"[\w-]+", out))
    assert not [item for item in expected if item not in words], out
    if not command:  # each command comes with its one-line summary, not a bare name
        lines = {line.split()[1]: line for line in out.splitlines() if len(line.split()) > 2 and line.startswith("│ ")}
        assert all(len(lines[name].split()) > 4 for name in COMMANDS)
