"""`--overwrite` replaces llmtune runs only: a directory holding anything else is refused, with or without the
flag, and nothing in it is deleted. One row per directory a careless user could point `--output` at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_recipe
from test_bad_input import assert_user_error


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links not followed) with its content."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def user_files(target: Path, tmp_path: Path) -> None:
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "data").mkdir()
    (target / "data" / "train.csv").write_text("text,label\n")


def plain_checkpoint(target: Path, tmp_path: Path) -> None:
    """A model directory that is not a run: model files but no recipe.yaml."""
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"weights")


def run_with_a_user_file(target: Path, tmp_path: Path) -> None:
    fake_run(target, tmp_path)
    (target / "thesis.tex").write_text("two years of work")


def run_with_a_link_inside(target: Path, tmp_path: Path) -> None:
    """A run whose checkpoints folder is a link to the user's files: deleting through it would reach them."""
    fake_run(target, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    os.symlink(elsewhere, target / "checkpoints")


def recipe_of_something_else(target: Path, tmp_path: Path) -> None:
    """A recipe.yaml that is not an llmtune run's (another tool's config of the same name)."""
    target.mkdir()
    (target / "recipe.yaml").write_text("ingredients: [flour, eggs]\n")


def fake_run(target: Path, tmp_path: Path) -> None:
    target.mkdir()
    (target / "recipe.yaml").write_text("model: {name: x}\ntask: {type: classification}\ndata: {}\noutput_dir: x\n")
    (target / "train_log.jsonl").write_text("")


CASES = {
    # id: (what the directory holds, a fragment of the refusal)
    "user-files": (user_files, "files that are not part of an llmtune run (data, notes.txt)"),
    "plain-checkpoint": (plain_checkpoint, "files but no llmtune recipe.yaml"),
    "run-plus-user-file": (run_with_a_user_file, "(thesis.tex)"),
    "run-with-link-inside": (run_with_a_link_inside, "(checkpoints)"),
    "foreign-recipe-yaml": (recipe_of_something_else, "files but no llmtune recipe.yaml"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", CASES)
def test_train_refuses_a_directory_that_is_not_a_run(cli, tiny_bert, sentiment_files, tmp_path, case, overwrite):
    setup, fragment = CASES[case]
    target = tmp_path / "target"
    setup(target, tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    before, outside = snapshot(target), snapshot(tmp_path)
    args = ("train", recipe, "--output", target) + (("--overwrite",) if overwrite else ())
    err = assert_user_error(cli(*args), f"output_dir: {target} already holds", fragment, "choose another directory")
    assert "--overwrite" not in err  # the flag would not help: never point the user at it
    assert snapshot(target) == before and snapshot(tmp_path) == outside


def test_overwrite_of_the_working_directory_deletes_nothing(cli, tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """`-o . --overwrite` from the folder holding the recipe and its data."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert_user_error(
        cli("train", recipe.name, "--output", ".", "--overwrite"), "output_dir: . already holds files that are not part"
    )
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_unfinished_run(cli, tiny_bert, sentiment_files, tmp_path):
    """A run killed mid-way (recipe, log, a half-written checkpoint, an atomic write's temporary file) is a run."""
    target = tmp_path / "target"
    fake_run(target, tmp_path)
    (target / "checkpoints" / ".tmp-step-3").mkdir(parents=True)
    (target / ".metrics.json.a1b2c3").write_text("{")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    assert_user_error(
        cli("train", recipe, "--output", target), "already holds an unfinished run; pass --overwrite to replace it"
    )
    code, out, err = cli("train", recipe, "--output", target, "--overwrite")
    assert code == 0, err
    assert (target / "metrics.json").is_file() and not (target / ".metrics.json.a1b2c3").exists()
    assert not (target / "checkpoints" / ".tmp-step-3").exists()


def test_merge_overwrite_refuses_a_directory_that_is_not_a_run(cli, tiny_bert, sentiment_files, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_recipe(run / "recipe.yaml", tiny_bert, sentiment_files, "method:\n  type: lora\n")
    (run / "metrics.json").write_text("{}")
    (run / "adapter_config.json").write_text("{}")
    target = tmp_path / "merged"
    user_files(target, tmp_path)
    before = snapshot(target)
    err = assert_user_error(
        cli("merge", run, "--output", target, "--overwrite"), "not part of an llmtune merged model (data, notes.txt)"
    )
    assert "--overwrite" not in err
    assert snapshot(target) == before


def fake_export(target: Path, tmp_path: Path) -> None:
    fake_run(target, tmp_path)
    (target / "train_log.jsonl").unlink()
    (target / "metrics.json").write_text("{}")
    (target / "model.onnx").write_bytes(b"graph")


def fake_merged_model(target: Path, tmp_path: Path) -> None:
    """What merge writes: a LoRA run's recipe beside folded weights, and no adapter."""
    target.mkdir()
    (target / "recipe.yaml").write_text(
        "model: {name: x}\ntask: {type: classification}\ndata: {}\nmethod: {type: lora}\n"
    )
    (target / "metrics.json").write_text("{}")
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"weights")


def fake_sweep(target: Path, tmp_path: Path) -> None:
    target.mkdir()
    (target / "sweep.json").write_text("{}")
    fake_run(target / "trial-0000", tmp_path)


def fake_lora_run(folder: Path, tiny_bert, sentiment_files) -> Path:
    """A finished LoRA run as far as the checks before loading can tell."""
    folder.mkdir()
    write_recipe(folder / "recipe.yaml", tiny_bert, sentiment_files, "method:\n  type: lora\n")
    (folder / "metrics.json").write_text("{}")
    (folder / "adapter_config.json").write_text("{}")
    return folder


OTHER_KINDS = {
    # (command, what the target holds): a fragment of the refusal
    ("train", fake_export): "holds an ONNX export (llmtune export), not a training run",
    ("train", fake_merged_model): "holds a merged model (llmtune merge), not a training run",
    ("train", fake_sweep): "holds a sweep (llmtune sweep), not a training run",
    ("merge", fake_run): "holds a training run (llmtune train), not a merged model",
    ("merge", fake_export): "holds an ONNX export (llmtune export), not a merged model",
    ("export", fake_run): "holds a training run (llmtune train), not an ONNX export",
    ("export", fake_merged_model): "holds a merged model (llmtune merge), not an ONNX export",
}


@pytest.mark.parametrize(("command", "setup"), OTHER_KINDS, ids=lambda x: getattr(x, "__name__", x))
def test_overwrite_replaces_only_its_own_kind_of_output(cli, tiny_bert, sentiment_files, tmp_path, command, setup):
    """`--overwrite` of train, merge and export never deletes another command's output, and names what it is."""
    target = tmp_path / "target"
    setup(target, tmp_path)
    if command == "train":
        args = ("train", write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files))
    else:
        args = (command, fake_lora_run(tmp_path / "source", tiny_bert, sentiment_files))
    before = snapshot(target)
    err = assert_user_error(cli(*args, "--output", target, "--overwrite"), OTHER_KINDS[command, setup])
    assert "choose another directory" in err
    assert snapshot(target) == before


@pytest.mark.parametrize(
    ("setup", "kind"),
    [
        (fake_run, "training run"),
        (fake_export, "ONNX export"),
        (fake_merged_model, "merged model"),
        (fake_sweep, "sweep"),
        (user_files, None),
        (plain_checkpoint, None),
        (recipe_of_something_else, None),
    ],
)
def test_output_kind_tells_what_a_directory_holds(setup, kind, tmp_path):
    from llmtune.common.runs import output_kind

    setup(tmp_path / "target", tmp_path)
    assert output_kind(tmp_path / "target") == kind


def test_a_sweep_names_the_output_it_will_not_write_into(cli, tiny_bert, sentiment_files, tmp_path):
    pytest.importorskip("optuna")
    target = tmp_path / "target"
    fake_run(target, tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    space = tmp_path / "space.yaml"
    space.write_text(
        "objective: {metric: accuracy}\nparameters:\n  training.learning_rate: {uniform: [1.0e-5, 1.0e-3]}\n"
    )
    before = snapshot(target)
    assert_user_error(
        cli("sweep", recipe, "--space", space, "--output", target),
        f"--output {target}: holds a training run (llmtune train); choose a new or empty directory for the sweep",
    )
    assert snapshot(target) == before
