"""The commands a user runs after training: validate, eval (run, file, bare checkpoint), predict."""

from __future__ import annotations

import json
import shutil

import pytest
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


def test_text_pairs(cli, tiny_bert, tmp_path):
    rows = [("a cat sits", "an animal sits", "entailment"), ("a cat sits", "nobody sits", "contradiction")] * 8
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(
            "".join(json.dumps({"premise": p, "hypothesis": h, "label": label}) + "\n" for p, h, label in rows)
        )
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    code, out, err = cli(
        "train", recipe, "--set", "task.text_column=premise", "--set", "task.text_pair_column=hypothesis"
    )
    assert code == 0, err
    code, out, err = cli("predict", tmp_path / "run", "--input", files["test"])
    assert code == 0, err
    row = json.loads(out.splitlines()[0])
    assert row["inputs"] == {"premise": "a cat sits", "hypothesis": "an animal sits"}
    assert row["predicted"] in ("contradiction", "entailment") and row["reference"] == "entailment"
    # The second text reaches the model: the same premise with another hypothesis is scored differently.
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
    code, out, err = cli("predict", tmp_path / "run", *pairs)
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["inputs"]["hypothesis"] == "an animal sits" and second["inputs"]["hypothesis"] == "nobody sits"
    assert first["probabilities"] != second["probabilities"]


@pytest.mark.parametrize("command", [[], ["validate"], ["train"], ["eval"], ["predict"]])
def test_help_explains_each_command(cli, command):
    code, out, err = cli(*command, "--help")
    assert code == 0
    assert "Usage" in out and len(out.splitlines()) > 8
