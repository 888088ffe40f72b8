"""Careless and hostile input, as a catalogue: one row per case. Each bad input ends in one `error:` line naming
what is wrong and where, exit code 2, nothing written; where llmtune goes on, one `warning:` line says why."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_recipe
from test_bad_input import assert_user_error

# --------------------------------------------------------------------------- helpers


@dataclass
class Case:
    """A recipe-level case: `make(tmp_path, model, files)` returns (recipe, extra CLI args); every command in
    `commands` must fail with one line holding `error`."""

    id: str
    make: Callable
    error: str
    commands: tuple[str, ...] = ("validate", "train")
    model: str = "tiny_bert"


def recipe_with(*sets: str, extra: str = "") -> Callable:
    """A case maker: the small sentiment recipe with `--set` overrides (and extra YAML)."""

    def make(tmp_path, model, files):
        recipe = write_recipe(tmp_path / "r.yaml", model, files, extra)
        return recipe, [arg for item in sets for arg in ("--set", item)]

    return make


def with_file(split: str, name: str, content: bytes | str, *sets: str) -> Callable:
    """A case maker: one split replaced by a file with this content."""

    def make(tmp_path, model, files):
        bad = tmp_path / name
        bad.write_bytes(content if isinstance(content, bytes) else content.encode())
        recipe = write_recipe(tmp_path / "r.yaml", model, {**files, split: bad})
        return recipe, [arg for item in sets for arg in ("--set", item)]

    return make


def with_model(build: Callable, *sets: str) -> Callable:
    """A case maker: the recipe's model replaced by what `build(folder, model)` makes."""

    def make(tmp_path, model, files):
        folder = tmp_path / "model"
        folder.mkdir()
        recipe = write_recipe(tmp_path / "r.yaml", build(folder, model), files)
        return recipe, [arg for item in sets for arg in ("--set", item)]

    return make


def raw_recipe(text: str) -> Callable:
    def make(tmp_path, model, files):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(text)
        return recipe, []

    return make


def not_gguf(folder: Path, model) -> Path:
    fake = folder / "model.gguf"
    fake.write_bytes(b"this is not a GGUF file" * 10)
    return fake


def broken_config(folder: Path, model) -> Path:
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,')  # cut short
    return folder


def custom_code(folder: Path, model) -> Path:
    """A checkpoint that needs its own modelling code (auto_map), as many hub models do."""
    import shutil

    for file in Path(model).iterdir():
        shutil.copy(file, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny-custom",
        auto_map={
            "AutoConfig": "configuration_tiny.TinyConfig",
            "AutoModelForSequenceClassification": "modeling_tiny.TinyModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny.py").write_text(
        "from transformers import BertConfig\n\nclass TinyConfig(BertConfig):\n    model_type = 'tiny-custom'\n"
    )
    (folder / "modeling_tiny.py").write_text(
        "from transformers import BertForSequenceClassification\nfrom .configuration_tiny import TinyConfig\n\n"
        "class TinyModel(BertForSequenceClassification):\n    config_class = TinyConfig\n"
    )
    return folder


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    + "model: {name: x}\ntask: {type: classification}\ndata: {train: {path: *i}}\n"
)

CASES = [
    Case(
        "infinite-learning-rate",
        recipe_with("training.learning_rate=.inf"),
        "training.learning_rate: Input should be a finite number; got inf",
    ),
    Case(
        "nan-learning-rate",
        recipe_with("training.learning_rate=.nan"),
        "training.learning_rate: Input should be a finite",
    ),
    Case("infinite-epochs", recipe_with("training.epochs=.inf"), "training.epochs: Input should be a finite number"),
    Case(
        "flag-as-batch-size",
        recipe_with("training.batch_size=true"),
        "training.batch_size: Input should be a valid integer, unable to parse string as an integer; got 'true'",
    ),
    Case("yaml-alias-bomb", raw_recipe(ALIAS_BOMB), "YAML aliases expand to more than 100,000 values"),
    Case("empty-recipe", raw_recipe("# nothing here yet\n"), "the recipe is empty; expected the sections model, task"),
    Case("fp16-without-gpu", recipe_with("training.precision=fp16"), "training.precision: fp16 needs a GPU"),
    Case("not-a-gguf-file", with_model(not_gguf), "model.name: cannot load"),
    Case("broken-config-json", with_model(broken_config), "config.json' is not a valid JSON file"),
    Case(
        "code-needs-trust",
        with_model(custom_code),
        "ships its own modelling code; to run it, set model.trust_remote_code: true in the recipe",
    ),
    Case(
        "revision-of-a-local-directory",
        recipe_with("model.revision=v2"),
        "model.revision: applies to hub ids, but model.name is the local path",
    ),
    Case(
        "gguf-file-offline",
        recipe_with("model.name=HuggingFaceTB/SmolLM2-135M-Instruct", "model.gguf_file=other.gguf"),
        "model.gguf_file: 'other.gguf' of HuggingFaceTB/SmolLM2-135M-Instruct is not available offline",
    ),
    Case(
        "hub-dataset-offline",
        recipe_with("data.train={hub: nobody/no-such-dataset}"),
        "hub dataset 'nobody/no-such-dataset' is not in the local cache and HF_HUB_OFFLINE is set",
    ),
    Case(
        "encoder-as-causal-lm",
        recipe_with("task={type: summarization, generative: true, source_column: text, target_column: label}"),
        "is a bert model, not a causal (GPT-style) language model; task.generative: true needs one",
    ),
    Case(
        "jsonl-broken-on-line-5",
        with_file("validation", "v.jsonl", '{"text": "a", "label": "negative"}\n' * 4 + '{"text": "b", "label": \n'),
        "line 5: not valid JSON",
    ),
    Case(
        "latin-1-csv",
        with_file("train", "t.csv", "text,label\ngreat film,positive\ncaf\xe9 au lait,negative\n".encode("latin-1")),
        "line 3: t.csv is not UTF-8 text (byte 0xe9); save it as UTF-8",
    ),
    Case(
        "empty-csv-text-cell",
        with_file("train", "t.csv", 'text,label\ngood,positive\n"",negative\n'),
        "line 3: column 'text' holds an empty text; expected text",
    ),
    Case(
        "duplicate-column-names",
        with_file("train", "t.csv", "text,text,label\na,b,positive\nc,d,negative\n"),
        "line 1: the header names column 'text' twice",
    ),
    Case(
        "rename-onto-an-existing-column",
        recipe_with("data.columns={label: text}"),
        "data.columns renames 'label' to 'text', but the data has a column 'text' already",
    ),
    Case(
        "steps-beyond-any-run",
        recipe_with("training.max_steps=" + "1" + "0" * 38),
        "training.max_steps: Input should be less than or equal to 1000000000; got 1000",
    ),
    Case(
        "batch-beyond-any-run",
        recipe_with("training.batch_size=" + "1" + "0" * 26),
        "training.batch_size: Input should be less than or equal to 1000000; got 1000",
    ),
    Case("empty-output-dir", recipe_with('output_dir=""'), "output_dir: empty; expected a directory path"),
    Case(
        "warmup-longer-than-the-run",
        recipe_with("training.warmup_steps=1000"),
        "training.warmup_steps: 1000 warmup steps but the run has 4 steps in all",
        commands=("train",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, cli, tiny_bert, sentiment_files, tmp_path):
    recipe, args = case.make(tmp_path, tiny_bert, sentiment_files)
    before = sorted(path.name for path in tmp_path.iterdir())
    for command in case.commands:
        err = assert_user_error(cli(command, recipe, *args), case.error)
        assert len(err) < 1000, err[:300]  # what a message quotes is bounded
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no run directory, nothing else


def test_warmup_longer_than_a_token_budget_run_stops_before_anything_is_written(
    cli, tiny_bert, sentiment_files, tmp_path
):
    """A token budget's steps are counted once the data is tokenized (after the model loads), and checked then."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    sets = ("--set", "training.max_tokens=512", "--set", "training.warmup_steps=1000")
    code, _, err = cli("train", recipe, *sets, "--output", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: training.warmup_steps: 1000 warmup steps but the run has "), err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- llmtune goes on, and says why


def test_a_label_train_never_shows_is_one_warning_line(tiny_bert, sentiment_files, tmp_path):
    """The real entry point: the warning is one `warning:` line on stderr, and validate goes on."""
    import os
    import sys

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    command = [
        sys.executable,
        "-m",
        "llmtune",
        "validate",
        str(recipe),
        "--set",
        "task.label_names=[negative, neutral, positive]",
        "--set",
        "data.leakage=off",  # the fixture's splits are the same rows; this test is about the label line
    ]
    finished = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr.strip() == (
        f"warning: data.train ({sentiment_files['train']}): no training example has the label 'neutral' "
        "(task.label_names); the model cannot learn to predict it"
    )


def test_epochs_that_plan_more_steps_than_any_run_are_refused():
    from llmtune.common.errors import UserError
    from llmtune.engine.preparation import planned_steps
    from llmtune.recipe import Training

    training = Training(epochs=10**6, batch_size=1)
    with pytest.raises(UserError, match="training.epochs: 1e.06 epochs plan 10,000,000,000 optimizer steps; at most"):
        training.check_planned_steps(planned_steps(10_000, training))
    training.check_planned_steps(planned_steps(1_000, training))  # a billion: the bound itself is allowed


def test_a_capped_max_length_and_mixed_labels_are_one_warning_line_each(tiny_bert, sentiment_files, tmp_path):
    """validate says once that training.max_length is more than the model reads (128 positions), and names the
    label values of a column that mixes names with integer indices."""
    import os
    import sys

    train = sentiment_files["train"]
    train.write_text(train.read_text().replace(",positive\n", ",1\n", 2))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    command = [sys.executable, "-m", "llmtune", "validate", str(recipe), "--set", "training.max_length=100000"]
    command += ["--set", "task.label_names=[negative, positive]", "--set", "data.leakage=off"]  # splits: same rows
    finished = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr.strip().splitlines() == [
        f"warning: data.train ({train}): column 'label' mixes label names (negative, positive) with integers (1); "
        "the integers are read as indices into ['negative', 'positive']. Use one kind of label",
        "warning: training.max_length: 100000 is more than the model reads; inputs are cut at 128 tokens "
        "(its max_position_embeddings)",
    ]


def test_train_says_once_that_max_length_is_capped(cli, tiny_bert, sentiment_files, tmp_path):
    from llmtune.common.errors import Notice

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    with pytest.warns(Notice) as caught:
        code, out, err = cli("train", recipe, "--set", "training.max_length=100000", "--set", "training.max_steps=1")
    assert code == 0, err
    capped = [str(w.message) for w in caught if "training.max_length" in str(w.message)]
    assert capped == [
        "training.max_length: 100000 is more than the model reads; inputs are cut at 128 tokens "
        "(its max_position_embeddings)"
    ]


def test_a_lora_run_shows_no_library_warnings(tiny_bert, sentiment_files, tmp_path):
    """The real entry point: DeepSpeed, when installed, is not imported by a run that does not use its engine, so its
    'Setting accelerator to CPU' line is gone, and no library warning reaches stderr."""
    import os
    import sys

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files, "method:\n  type: lora\n")
    code = (  # the fixture's splits are the same rows: the leakage warning is not a library's, so off
        "import sys, runpy; sys.argv = ['llmtune', 'train', sys.argv[1], '--set', 'training.max_steps=1',"
        " '--set', 'data.leakage=off'];"
        "\ntry: runpy.run_module('llmtune', run_name='__main__')"
        "\nfinally: print('deepspeed imported:', 'deepspeed' in sys.modules)"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code, str(recipe)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    assert "[WARNING]" not in finished.stdout and "deepspeed imported: False" in finished.stdout, finished.stdout


def test_a_rename_of_a_column_the_data_lacks_is_a_warning(cli, tiny_bert, sentiment_files, tmp_path):
    from llmtune.common.errors import DataWarning

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    with pytest.warns(DataWarning, match="data.columns maps 'sentence', which the data does not have .it has 'text'"):
        code, out, err = cli("validate", recipe, "--set", "data.columns={sentence: text}")
    assert code == 0, err


def test_trusted_remote_code_names_the_files_it_runs(cli, tiny_bert, sentiment_files, tmp_path):
    from llmtune.common.errors import Notice

    folder = tmp_path / "model"
    folder.mkdir()
    recipe = write_recipe(tmp_path / "r.yaml", custom_code(folder, tiny_bert), sentiment_files)
    expected = (
        f"model.trust_remote_code: running the code shipped with {folder} .configuration_tiny.py, modeling_tiny.py."
    )
    with pytest.warns(Notice, match=expected):
        code, out, err = cli("train", recipe, "--set", "model.trust_remote_code=true", "--set", "training.max_steps=1")
    assert code == 0, err


@pytest.mark.parametrize(
    ("labels", "names"), [("True,False", None), ("1,0", "[negative, positive]")], ids=["csv-booleans", "index-strings"]
)
def test_labels_a_spreadsheet_writes_are_understood(labels, names, cli, tiny_bert, tmp_path):
    """A CSV's True/False labels (read as booleans), and "0"/"1" label strings with label names given."""
    first, second = labels.split(",")
    rows = "".join(f"good film,{first}\nawful film,{second}\n" for _ in range(8))
    if names:  # the labels as quoted strings in JSON Lines
        rows = "".join(
            json.dumps({"text": t, "label": label}) + "\n"
            for t, label in [("good film", first), ("awful film", second)] * 8
        )
    name = "data.jsonl" if names else "data.csv"
    data = tmp_path / name
    data.write_text(rows if names else "text,label\n" + rows)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, {"train": data, "validation": data, "test": data})
    args = ["--set", f"task.label_names={names}"] if names else []
    code, out, err = cli("validate", recipe, *args)
    assert code == 0, err
    expected = "label_names: False, True" if not names else "data.train: 16 examples"
    assert expected in out


# --------------------------------------------------------------------------- commands after training


@pytest.fixture(scope="module")
def finished_run(tiny_bert, tmp_path_factory):
    """A tiny run trained with max_length above the model's 128 positions (capped when it trained)."""
    from conftest import write_sentiment_files

    from llmtune import load_recipe, train

    folder = tmp_path_factory.mktemp("finished")
    files = write_sentiment_files(folder, repeat=4)
    recipe = load_recipe(write_recipe(folder / "r.yaml", tiny_bert, files), ["training.max_length=512"])
    return train(recipe, output_dir=folder / "run").run_dir


def test_max_length_is_capped_at_the_models_positions_and_saved(finished_run, cli):
    from llmtune import load_recipe

    assert load_recipe(finished_run / "recipe.yaml").training.max_length == 128  # what it trained with
    code, out, err = cli("predict", finished_run, "--text", "a wonderful, moving film " * 200)
    assert code == 0, err
    assert json.loads(out)["predicted"] in ("negative", "positive")


def truncated_copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


COMMANDS = [
    (
        "eval-output-in-a-missing-directory",
        lambda run, tmp: ["eval", run, "-o", tmp / "nowhere" / "m.json"],
        "--output {tmp}/nowhere/m.json: the directory {tmp}/nowhere does not exist",
    ),
    ("eval-output-onto-a-directory", lambda run, tmp: ["eval", run, "-o", tmp], "--output {tmp}: is a directory"),
    (
        "predict-output-in-a-missing-directory",
        lambda run, tmp: ["predict", run, "--text", "good", "-o", tmp / "nowhere" / "p.jsonl"],
        "the directory {tmp}/nowhere does not exist",
    ),
    (
        "predict-an-empty-text",
        lambda run, tmp: ["predict", run, "--text", ""],
        "input row 1: missing or empty 'text'; expected a non-empty text",
    ),
    (
        "predict-an-input-the-task-lacks",
        lambda run, tmp: ["predict", run, "--question", "Why?", "--context", "So."],
        "--question: not an input of classification runs; they take --text",
    ),
    ("compare-one-run", lambda run, tmp: ["compare", run], "compare needs two or more run directories, got 1"),
    (
        "eval-a-directory-that-is-not-a-run",
        lambda run, tmp: ["eval", tmp],
        "{tmp}: neither a run directory (no recipe.yaml) nor a checkpoint directory (no config.json)",
    ),
    (
        "eval-truncated-weights",
        lambda run, tmp: ["eval", truncated_copy(run, tmp)],
        "{tmp}/damaged: the weights cannot be read",
    ),
    (
        "push-while-offline",
        lambda run, tmp: ["push", run, "--repo-id", "acme/x"],
        "HF_HUB_OFFLINE is set, and a push must reach the hub",
    ),
]


@pytest.mark.parametrize(("case", "command", "error"), COMMANDS, ids=[row[0] for row in COMMANDS])
def test_bad_command_input_is_one_line(case, command, error, finished_run, cli, tmp_path):
    before = sorted(path.name for path in tmp_path.iterdir())
    assert_user_error(cli(*command(finished_run, tmp_path)), error.format(tmp=tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == before + (["damaged"] if "damaged" in error else [])


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("*.missing", "--include *.missing: matches no file of"),
        ("../secrets.txt", "--include ../secrets.txt: names a path, not a file"),
    ],
)
def test_push_include_patterns_must_name_files_of_the_run(pattern, error, finished_run, cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert_user_error(cli("push", finished_run, "--repo-id", "acme/x", "--include", pattern), error)


# --------------------------------------------------------------------------- a file system that refuses


@pytest.fixture()
def small_disk(tmp_path):
    """A 6 MB file system of its own (tmpfs; needs root, as CI has): a run fills it up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture()
def read_only_disk(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_train_into_a_read_only_directory_is_one_line(cli, tiny_bert, sentiment_files, tmp_path, read_only_disk):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    assert_user_error(
        cli("train", recipe, "-o", read_only_disk / "run"),
        f"output_dir: cannot write in {read_only_disk} (read-only file system)",
    )


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-run", "replacing-a-run"])
def test_a_full_disk_says_so_and_leaves_the_directory_as_it_was(
    overwrite, cli, tiny_bert, sentiment_files, tmp_path, small_disk, finished_run
):
    """The model (a few MB with its checkpoint) does not fit: the run stops with one line, and the directory
    holds what it held before: nothing for a new run, the replaced run, intact, for --overwrite."""
    import shutil

    run = small_disk / "run"
    if overwrite:
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.png", "model.safetensors"))
    before = {p.relative_to(small_disk): p.read_bytes() for p in small_disk.rglob("*") if p.is_file()}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    args = ["-o", run, "--set", "model.name=" + str(tiny_bert)] + (["--overwrite"] if overwrite else [])
    code, out, err = cli("train", recipe, "--set", "training.epochs=3", *args)
    assert code == 2 and err.startswith(
        f"error: output_dir: the disk is full (no space left on device while writing {run}"
    )
    assert len(err.strip().splitlines()) == 1
    assert {p.relative_to(small_disk): p.read_bytes() for p in small_disk.rglob("*") if p.is_file()} == before
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".")]  # no set-aside copy left behind


def test_a_diverging_loss_stops_the_run_and_saves_no_model(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli(
        "train", recipe, "--set", "training.learning_rate=1e30", "--set", "training.log_every_n_steps=1"
    )
    assert code == 2, err
    assert err.startswith("error: training diverged at step ") and "Lower training.learning_rate (now 1e+30)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # a new run that failed leaves nothing
