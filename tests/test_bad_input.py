"""Bad recipes and data stop before training: one `error:` line naming the key, file, column or value
and what was expected, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_recipe


def make_recipe(
    tmp_path: Path,
    model,
    files: dict[str, Path],
    replace: dict[str, str] | None = None,
    extra: str = "",
    name: str = "r.yaml",
) -> Path:
    """write_recipe, then textual replacements (to put a bad value inside a section)."""
    path = write_recipe(tmp_path / name, model, files, extra)
    text = path.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def location(path: Path, needle: str) -> str:
    """`file:line:column` of the first line containing `needle`, column at its first non-blank character."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return f"{path}:{number}:{len(line) - len(line.lstrip()) + 1}"
    raise AssertionError(f"{needle!r} not in {path}")


def assert_user_error(result, *fragments: str) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    assert out == "", out
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def assert_rejected(cli, recipe: Path, *fragments: str, args: tuple = ()) -> None:
    """`validate` and `train` both fail with the same message; train writes nothing."""
    run_dir = recipe.parent / "run"
    message = assert_user_error(cli("validate", recipe, *args), *fragments)
    assert assert_user_error(cli("train", recipe, *args), *fragments) == message
    assert not run_dir.exists()


# --------------------------------------------------------------------------- recipe


def test_unknown_key_in_yaml(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files, {"  epochs: 1\n": "  epochs: 1\n  learnign_rate: 0.1\n"})
    assert_rejected(
        cli, recipe, location(recipe, "learnign_rate") + ":", "'training.learnign_rate'", "did you mean 'learning_rate'"
    )


def test_unknown_key_in_set(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files)
    assert_rejected(
        cli,
        recipe,
        "error: --set training.learnign_rate=1: ",
        "'training.learnign_rate'",
        "did you mean 'learning_rate'",
        args=("--set", "training.learnign_rate=1"),
    )


def test_unknown_key_in_method_section(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files, extra="method:\n  type: lora\n  rank: 4\n")
    assert_rejected(
        cli,
        recipe,
        location(recipe, "rank:") + ":",
        "'method.rank'",
        "valid keys here: type, r, alpha, dropout, target_modules",
    )


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("  batch_size: many\n", "training.batch_size", "valid integer"),
        ("  learning_rate: abc\n", "training.learning_rate", "valid number"),
    ],
)
def test_wrong_type(cli, tiny_bert, sentiment_files, tmp_path, line, key, expected):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files, {"  batch_size: 8\n": line})
    value = line.split(":")[1].strip()
    assert_rejected(cli, recipe, location(recipe, line.strip()) + ":", key, expected, f"got '{value}'")


def test_wrong_type_in_set(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files)
    assert_rejected(
        cli,
        recipe,
        "--set training.batch_size=many",
        "valid integer",
        "got 'many'",
        args=("--set", "training.batch_size=many"),
    )


def test_invalid_method_type(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files, extra="method:\n  type: qlora\n")
    assert_rejected(
        cli,
        recipe,
        location(recipe, "type: qlora") + ":",
        "method.type",
        "'qlora'",
        "expected one of",
        "'full'",
        "'lora'",
        "'ia3'",
        "'prefix_tuning'",
    )


def test_invalid_precision(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files, {"  epochs: 1\n": "  epochs: 1\n  precision: fp8\n"})
    assert_rejected(
        cli,
        recipe,
        location(recipe, "precision: fp8") + ":",
        "training.precision",
        "'fp8'",
        "'auto'",
        "'fp32'",
        "'bf16'",
        "'fp16'",
    )


def test_malformed_yaml(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: x\n task:\n  type: classification\n")  # `task` indented by one space
    assert_rejected(cli, recipe, f"{recipe}:3:2: invalid YAML")
    recipe.write_text("model:\n  name: x\ntask: [classification\n")  # unclosed flow sequence
    assert_rejected(cli, recipe, f"{recipe}:4:1: invalid YAML", "expected ',' or ']'")


def test_recipe_file_missing(cli, tmp_path):
    assert_rejected(cli, tmp_path / "nope.yaml", f"{tmp_path / 'nope.yaml'}: recipe file not found")


def test_set_without_equals(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files)
    assert_rejected(
        cli, recipe, "--set training.learning_rate: expected KEY=VALUE", args=("--set", "training.learning_rate")
    )


# --------------------------------------------------------------------------- data


def test_missing_data_file(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(
        tmp_path, tiny_bert, sentiment_files, {f"  train: {sentiment_files['train']}\n": "  train: missing.csv\n"}
    )
    assert_rejected(
        cli, recipe, "data.train", "file not found", str(tmp_path / "missing.csv")
    )  # relative to the recipe file


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "garbage.csv",
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
            "line 1: garbage.csv is not UTF-8 text (byte 0x89)",
        ),
        (
            "ragged.csv",
            b'text,label\n"a film",positive\n"bad, bad",negative,extra,more\n',
            "cannot read ragged.csv as csv: Error tokenizing data. C error: Expected 2 fields in line 3, saw 4",
        ),
        (
            "quote.csv",
            b'text,label\n"a film,positive\nbad,negative\n',
            "cannot read quote.csv as csv: Error tokenizing data. C error: EOF inside string",
        ),
    ],
)
def test_unreadable_data_file(cli, tiny_bert, sentiment_files, tmp_path, name, content, expected):
    bad = tmp_path / name
    bad.write_bytes(content)
    recipe = make_recipe(tmp_path, tiny_bert, {**sentiment_files, "validation": bad})
    assert_rejected(cli, recipe, f"data.validation ({bad})", expected)


def test_unknown_file_type(cli, tiny_bert, sentiment_files, tmp_path):
    bad = tmp_path / "train.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a workbook")
    recipe = make_recipe(tmp_path, tiny_bert, {**sentiment_files, "train": bad})
    assert_rejected(
        cli,
        recipe,
        f"data.train ({bad})",
        "unknown file type '.xlsx'",
        "expected one of .csv, .tsv, .json, .jsonl, .parquet",
    )


def test_missing_column(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(
        tmp_path,
        tiny_bert,
        sentiment_files,
        {"  type: classification\n": "  type: classification\n  text_column: sentence\n"},
    )
    assert_rejected(
        cli, recipe, "data.train", "column 'sentence'", "task.text_column", "available columns: text, label"
    )


def test_label_not_in_label_names(cli, tiny_bert, sentiment_files, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("text,label\ngreat,positive\nawful,negative\nso-so,neutral\n")
    recipe = make_recipe(
        tmp_path,
        tiny_bert,
        {**sentiment_files, "validation": bad},
        {"  type: classification\n": "  type: classification\n  label_names: [negative, positive]\n"},
    )
    assert_rejected(
        cli,
        recipe,
        f"data.validation ({bad}) line 4",
        "label 'neutral'",
        "['negative', 'positive']",
        "task.label_names",
    )


@pytest.mark.parametrize("content", ["text,label\n", ""], ids=["header-only", "zero-bytes"])
def test_empty_split(cli, tiny_bert, sentiment_files, tmp_path, content):
    empty = tmp_path / "empty.csv"
    empty.write_text(content)
    recipe = make_recipe(tmp_path, tiny_bert, {**sentiment_files, "test": empty})
    assert_rejected(cli, recipe, f"data.test ({empty})", "no rows", "expected at least one example")


# --------------------------------------------------------------------------- model and output


def test_local_model_not_found(cli, sentiment_files, tmp_path):
    missing = tmp_path / "no-such-model"
    recipe = make_recipe(tmp_path, missing, sentiment_files)
    assert_rejected(
        cli,
        recipe,
        "model.name",
        f"directory not found: {missing}",
        "expected a local checkpoint directory or a hub id",
    )


def test_hub_model_offline(cli, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, "nobody/no-such-model-xyz", sentiment_files)
    assert_rejected(
        cli,
        recipe,
        "model.name",
        "'nobody/no-such-model-xyz' is not available offline",
        "HF_HUB_OFFLINE is set; not in the local hub cache): download it",
        "hf download nobody/no-such-model-xyz --local-dir DIR",
        "set model.name to DIR",
    )


def test_output_dir_holds_finished_run(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files)
    run_dir = tmp_path / "run"
    code, out, err = cli("train", recipe)
    assert code == 0, (out, err)
    metrics = run_dir / "metrics.json"
    before = {
        str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in run_dir.rglob("*")
        if path.is_file()
    }

    assert_user_error(cli("train", recipe), f"output_dir: {run_dir} already holds a finished run", "--overwrite")
    assert {
        str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in run_dir.rglob("*")
        if path.is_file()
    } == before

    code, out, err = cli("train", recipe, "--overwrite")
    assert code == 0, (out, err)
    assert metrics.stat().st_mtime_ns != before["metrics.json"][1]


def test_output_dir_holds_other_files(cli, tiny_bert, sentiment_files, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    recipe = make_recipe(tmp_path, tiny_bert, sentiment_files)
    err = assert_user_error(
        cli("train", recipe),
        f"output_dir: {run_dir} already holds files that are not part of an llmtune run (notes.txt)",
    )
    assert "--overwrite" not in err
    assert [path.name for path in run_dir.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------- the real entry point


def test_console_entry_point(tiny_bert, sentiment_files, tmp_path):
    """Outside the test runner: library loggers must not add lines of their own (datasets logs parse errors)."""
    bad = tmp_path / "ragged.csv"
    bad.write_text('text,label\n"a film",positive\n"bad, bad",negative,extra\n')
    recipe = make_recipe(tmp_path, tiny_bert, {**sentiment_files, "train": bad})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "llmtune", "validate", str(recipe)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.train ({bad}): cannot read ragged.csv as csv"), (
        result.stderr
    )


def test_fp16_without_gpu(cli, tiny_bert, sentiment_files, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "training.precision=fp16")
    assert code == 2 and err.startswith("error: training.precision: fp16 needs a GPU")
    assert not (tmp_path / "run").exists()
