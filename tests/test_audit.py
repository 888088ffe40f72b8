"""llmtune audit: the ranking of likely mislabeled rows, the out-of-fold and reused-run commands, and its errors."""

from __future__ import annotations

import csv
import random
import sys

import pytest
from conftest import write_recipe

from llmtune.commands.audit import rank_label_issues

NAMES = ["negative", "neutral", "positive"]


def test_ranking_puts_planted_flips_first_and_suggests_the_true_label():
    generator = random.Random(0)
    true_labels = [generator.randrange(3) for _ in range(300)]
    # A model right about every row, with confidence varying between 0.5 and 0.95.
    probabilities = []
    for label in true_labels:
        top = generator.uniform(0.5, 0.95)
        row = [(1 - top) / 2] * 3
        row[label] = top
        probabilities.append(row)
    flipped = set(generator.sample(range(300), 15))
    given = [(label + 1) % 3 if index in flipped else label for index, label in enumerate(true_labels)]
    texts = [f"text {index}" for index in range(300)]
    ranked = rank_label_issues(given, probabilities, NAMES, texts, lambda row: f"line {row + 2}")
    assert {row["row"] for row in ranked[:15]} == flipped
    for row in ranked[:15]:
        assert row["suggested_label"] == NAMES[true_labels[row["row"]]]
        assert row["given_label"] == NAMES[given[row["row"]]]
        assert row["location"] == f"line {row['row'] + 2}" and row["text"] == f"text {row['row']}"
    assert [row["score"] for row in ranked] == sorted(row["score"] for row in ranked)
    # find_label_issues flags most flips (not the least confident ones: below its per-class thresholds) and
    # hardly anything else.
    flagged = {row["row"] for row in ranked if row["flagged"]}
    assert len(flagged & flipped) >= 10 and len(flagged - flipped) <= 3


def planted_files(folder, flips: int = 3):
    """Sentiment files whose train split has `flips` rows of 'a waste of money' labelled positive."""
    reviews = [
        ("a wonderful, moving film", "positive"),
        ("dull and far too long", "negative"),
        ("I loved every minute", "positive"),
        ("a waste of money", "negative"),
    ] * 25
    rows = [
        (text, "positive" if index in range(3, 3 + 4 * flips, 4) else label)
        for index, (text, label) in enumerate(reviews)
    ]
    files = {}
    for split, content in (("train", rows), ("validation", reviews), ("test", reviews)):
        files[split] = folder / f"{split}.csv"
        files[split].write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in content))
    planted = {index for index, (row, clean) in enumerate(zip(rows, reviews)) if row != clean}
    return files, planted


def test_audit_command_finds_planted_flips_out_of_fold(cli, tiny_bert, tmp_path):
    files, planted = planted_files(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files, "")
    output = tmp_path / "issues.csv"
    code, out, err = cli(
        "audit", recipe, "--folds", "2", "--output", output,
        "--set", "training.learning_rate=3e-3", "--set", "training.epochs=10",
    )  # fmt: skip
    assert code == 0, err
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 100 and list(rows[0]) == [
        "row",
        "location",
        "given_label",
        "suggested_label",
        "score",
        "flagged",
        "text",
    ]
    # The 3 planted flips among the 6 rows (of 100) ranked most likely mislabeled, with the right suggestion.
    top = {int(row["row"]): row for row in rows[: 2 * len(planted)]}
    assert planted <= set(top) and all(top[row]["suggested_label"] == "negative" for row in planted)
    assert "fold 2/2" in err and not (tmp_path / "audit-folds").exists()  # the fold runs are cleaned up


def test_audit_reuse_run_writes_into_the_run_and_the_report_shows_it(cli, tiny_bert, tmp_path):
    files, planted = planted_files(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    code, out, err = cli("train", recipe, "--set", "training.learning_rate=3e-3", "--set", "training.epochs=5")
    assert code == 0, err
    run = tmp_path / "run"
    code, out, err = cli("audit", run, "--reuse-run")
    assert code == 0, err
    assert "reused run (in-sample" in out
    with (run / "label_issues.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert planted <= {int(row["row"]) for row in rows[: 2 * len(planted)]}
    code, out, err = cli("report", run)
    assert code == 0, err
    assert "Are the training labels clean?" in (run / "report.html").read_text()
    # The run directory stays replaceable: the audit's CSV is llmtune's own output.
    code, out, err = cli("train", recipe, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--folds", "1"], "--folds 1: expected 2 to 20 folds"),
        (["--folds", "11"], "a label has only 10 training rows"),
        (["--reuse-run"], "is a recipe; reusing needs a finished run directory"),
    ],
)
def test_bad_audit_input_fails_in_one_line(cli, tiny_bert, sentiment_files, tmp_path, arguments, expected):
    sentiment_files["train"].write_text(
        "text,label\n" + "".join(f"good {i},positive\nbad {i},negative\n" for i in range(10))
    )
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("audit", recipe, *arguments)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run-audit" / "audit-folds").exists()


def test_audit_of_something_else_fails_in_one_line(cli, tmp_path, monkeypatch):
    code, out, err = cli("audit", tmp_path / "nothing.txt")
    assert code == 2 and "neither a finished run directory nor a recipe file" in err
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # as if the audit extra were not installed
    code, out, err = cli("audit", tmp_path / "nothing.txt")
    assert code == 2 and "pip install 'llmtune[audit]'" in err and len(err.strip().splitlines()) == 1
