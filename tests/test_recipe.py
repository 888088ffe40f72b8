"""Recipe loading: overrides, path resolution, shorthands, defaults and the resolved copy."""

from __future__ import annotations

import pytest
import yaml

from llmtune import UserError, load_recipe
from llmtune.recipe import dump_recipe, validate


def write(tmp_path, text: str):
    path = tmp_path / "sub" / "my-recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """
model: {name: some/model}
task: {type: classification}
data:
  train: data/train.csv
  validation: {path: data/val.csv, max_samples: 10}
"""


def test_paths_in_the_file_are_relative_to_it_and_set_paths_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(write(tmp_path, BASE), ["data.test=elsewhere/test.csv"])
    assert recipe.data.train.path == str(tmp_path / "sub" / "data" / "train.csv")
    assert recipe.data.validation.path == str(tmp_path / "sub" / "data" / "val.csv")
    assert recipe.data.validation.max_samples == 10
    assert recipe.data.test.path == str(tmp_path / "elsewhere" / "test.csv")
    assert recipe.output_dir == "runs/my-recipe"


def test_overrides_parse_yaml_values_and_switch_methods(tmp_path):
    recipe = load_recipe(
        write(tmp_path, BASE),
        [
            "training.learning_rate=3e-5",
            "training.max_steps=7",
            "method.type=lora",
            "method.r=4",
            "task.label_names=[bad, good]",
            "training.max_grad_norm=null",
        ],
    )
    assert recipe.training.learning_rate == 3e-5 and recipe.training.max_steps == 7
    assert recipe.method.type == "lora" and recipe.method.r == 4
    assert recipe.task.label_names == ["bad", "good"]
    assert recipe.training.max_grad_norm is None


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["method.type=ia3"])
    again = validate(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_every_problem_is_reported_at_once(tmp_path):
    bad = BASE + "training:\n  batch_size: 0\n  epochs: -1\n  learnig_rate: 1\n"
    with pytest.raises(UserError) as caught:
        load_recipe(write(tmp_path, bad))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert any("training.batch_size" in line and "greater than or equal to 1" in line for line in lines)
    assert any("training.epochs" in line for line in lines)
    assert any("did you mean 'learning_rate'" in line for line in lines)
    assert all(line.startswith(str(tmp_path / "sub" / "my-recipe.yaml") + ":") for line in lines)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: {name: x}\nmodel: {name: y}\n", "key 'model' appears twice"),
        ("- a\n- b\n", "expected a mapping of sections"),
        (BASE + "data_extra: 1\n", "unknown key 'data_extra'"),
        (BASE.replace("data/train.csv", "{path: a.csv, hub: b}"), "give exactly one of `path`"),
        (BASE + "evaluation: {metrics: [bleu]}\n", "unknown metric 'bleu'"),
        (
            BASE.replace("{type: classification}", "{type: classification, label_names: [only]}"),
            "at least two label names",
        ),
    ],
)
def test_schema_errors(tmp_path, text, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(write(tmp_path, text))
