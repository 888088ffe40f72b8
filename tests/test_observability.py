"""Seeing what happened: trackers, plots, reports, compare, built-in recipes, starter recipes, progress."""

from __future__ import annotations

import html
import importlib.util
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, write_recipe, write_sentiment_files

from llmtune import recipe as schema
from llmtune import tasks

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def tracked_run(tiny_bert, tmp_path_factory):
    """A tiny classification run with TensorBoard tracking and validation every 2 steps."""
    directory = tmp_path_factory.mktemp("tracked")
    files = write_sentiment_files(directory, repeat=8)
    recipe = write_recipe(
        directory / "r.yaml", tiny_bert, files, "tracking: [tensorboard]\nevaluation:\n  every_n_steps: 2\n"
    )
    import llmtune

    loaded = llmtune.load_recipe(recipe, ["training.log_every_n_steps=1", "training.learning_rate=1e-3"])
    result = llmtune.train(loaded)
    return result


def test_python_api_returns_results_and_prints_nothing(tracked_run, capsys, tiny_bert):
    import llmtune

    assert set(tracked_run.metrics) == {"train", "validation", "test", "leakage"}  # the splits share every row
    metrics, predictions = llmtune.evaluate(tracked_run.run_dir, split="test")
    assert metrics["accuracy"] == pytest.approx(tracked_run.metrics["test"]["accuracy"])
    rows = llmtune.predict(tracked_run.run_dir, ["a wonderful, moving film"])
    assert rows[0]["predicted"] in ("negative", "positive") and rows[0]["inputs"] == {
        "text": "a wonderful, moving film"
    }
    captured = capsys.readouterr()
    assert captured.out == "" and "LOAD REPORT" not in captured.err


def test_a_long_evaluation_reports_its_progress(tracked_run, monkeypatch):
    import importlib

    import llmtune

    monkeypatch.setattr(
        importlib.import_module("llmtune.inference.evaluation"), "EVAL_PROGRESS_EVERY_S", 0
    )  # a line after every batch but the last
    lines = []
    metrics, _ = llmtune.evaluate(
        tracked_run.run_dir, split="test", overrides=["training.eval_batch_size=4"], echo=lines.append
    )
    batches = -(-metrics["num_examples"] // 4)
    assert len(lines) == batches - 1 >= 2, lines
    for number, line in enumerate(lines, 1):
        assert re.fullmatch(
            rf"test: batch {number}/{batches} \({4 * number} examples\)  elapsed \d+s  eta \d+s", line
        ), line
    assert metrics["accuracy"] == pytest.approx(tracked_run.metrics["test"]["accuracy"])


def test_tensorboard_event_files_hold_the_log_and_hyperparameters(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dir = tracked_run.run_dir / "tensorboard"
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    for tag in (
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/samples_per_s",
        "validation/accuracy",
        "test/accuracy",
    ):
        assert tag in tags, tags
    log = [json.loads(line) for line in (tracked_run.run_dir / "train_log.jsonl").read_text().splitlines()]
    logged_losses = [e["loss"] for e in log if "split" not in e]
    assert [e.value for e in accumulator.Scalars("train/loss")] == pytest.approx(logged_losses, rel=1e-5)
    assert [e.step for e in accumulator.Scalars("validation/accuracy")] == [
        e["step"] for e in log if e.get("split") == "validation"
    ]
    # The resolved recipe as hyper-parameters (TensorBoard's hparams plugin, in a sub-run).
    hparams = next(event_dir.rglob("hparams.yml"))
    values = yaml.safe_load(hparams.read_text())
    assert values["training.learning_rate"] == 1e-3 and values["task.label_names"] == "['negative', 'positive']"


def test_missing_tracker_package_is_one_line_before_training(cli, tiny_bert, sentiment_files, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files, "tracking: [tensorboard, wandb]\n")
    for command in ("validate", "train"):  # validate runs train's checks
        code, out, err = cli(command, recipe)
        assert code == 2
        assert (
            err.strip() == "error: tracking: 'wandb' needs the 'wandb' package, which is not installed; "
            "pip install wandb, or remove 'wandb' from tracking"
        )
    assert not (tmp_path / "run").exists()


def test_unknown_tracker_names_its_line(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files, "tracking: [tensorbored]\n")
    code, out, err = cli("validate", recipe)
    assert code == 2 and f"{recipe}:14:" in err and "tensorbored" in err and "tensorboard" in err


def test_plots_are_written_and_drawn_again_from_the_files(tracked_run):
    from PIL import Image

    from llmtune.reports import plots
    from llmtune.tasks.classification import confusion_counts

    run = tracked_run.run_dir
    for name in ("loss.png", "metric.png", "confusion_matrix.png"):
        image = Image.open(run / name)
        assert image.size[0] > 300 and len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, name
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    counts = confusion_counts(predictions, ["negative", "positive"])
    assert sum(map(sum, counts)) == 32 and sum(counts[i][i] for i in range(2)) == round(
        tracked_run.metrics["test"]["accuracy"] * 32
    )
    assert set(plots.render(run)) == {"loss.png", "metric.png", "confusion_matrix.png", "reliability.png"}


def test_report_html_is_self_contained(tracked_run, cli):
    code, out, err = cli("report", tracked_run.run_dir)
    assert code == 0, err
    page = (tracked_run.run_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4  # loss, metric, confusion matrix, reliability diagram
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "Worst predictions first: lowest correct" in page and "peak memory" in page and "learning_rate" in page
    assert f"{tracked_run.metrics['test']['accuracy']:.4f}" in page


def test_report_markdown_links_the_plots(tracked_run, cli, tmp_path):
    code, out, err = cli("report", tracked_run.run_dir, "--format", "md", "--output", tmp_path / "r.md")
    assert code == 0, err
    text = (tmp_path / "r.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (tmp_path / link).is_file(), link
    assert "| test |" in text and "Worst predictions first" in text


def test_report_of_an_unfinished_run_is_a_clear_error(cli, tmp_path):
    (tmp_path / "recipe.yaml").write_text("model: {name: x}\n")
    code, out, err = cli("report", tmp_path)
    assert code == 2 and "not a finished llmtune run (no metrics.json)" in err
    code, out, err = cli("report", tmp_path, "--format", "pdf")
    assert code == 2 and "--format pdf" in err


def test_worst_mistakes_come_first():
    """Rows ranked by the task's per-example metric, worst first; ties (all wrong) by confidence, highest first."""
    from llmtune.reports.report import sample_predictions
    from llmtune.tasks.base import prediction_row
    from llmtune.tasks.classification import Classification

    def row(index, text, label, predicted, score):
        return prediction_row(index, {"text": text}, predicted, score, label, {"correct": float(label == predicted)})

    rows = [row(0, "a", "pos", "neg", 0.6), row(1, "b", "pos", "pos", 0.99), row(2, "c", "neg", "pos", 0.95)]
    (title, mistakes), (_, unsure) = sample_predictions(rows, Classification)
    assert [r["inputs"]["text"] for r in mistakes] == ["c", "a", "b"] and "lowest correct" in title
    assert [r["inputs"]["text"] for r in unsure] == ["a", "c", "b"]


@pytest.fixture(scope="module")
def generation_run(tiny_gpt2, tmp_path_factory):
    """A tiny GPT-2 trained on a few SciTLDR abstracts (summarization-gpt): a real generation run to report on."""
    from test_generative_seq2seq import summarization_settings

    from llmtune import load_recipe, train

    run = tmp_path_factory.mktemp("generation") / "gen"
    recipe = load_recipe(RECIPES / "summarization-gpt.yaml", summarization_settings(tiny_gpt2, run))
    return train(recipe).run_dir


def test_generation_report_ranks_summaries_by_rouge(generation_run, cli):
    code, out, err = cli("report", generation_run)
    assert code == 0, err
    page = (generation_run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # loss and validation ROUGE-1; no confusion matrix
    rows = [json.loads(line) for line in (generation_run / "predictions.jsonl").read_text().splitlines()]
    worst = min(rows, key=lambda row: (row["metrics"]["rougeL"], -row["score"]))
    section = page[page.index("Worst summaries first: lowest rougeL") :]
    assert section.index(html.escape(worst["predicted"][:40])) < section.index("Least confident predictions")


def screenshot(page: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                "--window-size=1200,2000",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it"
)
def test_reports_render_with_visible_plots_in_a_headless_browser(tracked_run, generation_run, cli, tmp_path):
    from PIL import Image

    for run in (tracked_run.run_dir, generation_run):
        code, out, err = cli("report", run, "--output", tmp_path / f"{run.name}.html")
        assert code == 0, err
        png = tmp_path / f"{run.name}.png"
        screenshot(tmp_path / f"{run.name}.html", png)
        image = Image.open(png).convert("RGB")
        assert image.size == (1200, 2000)
        colours = image.getcolors(maxcolors=1 << 20)
        assert len(colours) > 200, f"{run.name}: screenshot looks blank ({len(colours)} colours)"
        # matplotlib's default line colours (tab:blue, tab:orange/green) are drawn, so the plots rendered.
        pixels = {colour for _, colour in colours}
        near = lambda target: any(sum(abs(a - b) for a, b in zip(c, target)) < 30 for c in pixels)  # noqa: E731
        assert near((31, 119, 180)), f"{run.name}: no plot line pixels"


def test_compare_puts_runs_side_by_side(tracked_run, generation_run, cli, tmp_path):
    code, out, err = cli("compare", tracked_run.run_dir, generation_run)
    assert code == 0, err
    lines = out.splitlines()
    assert tracked_run.run_dir.name in lines[0] and "gen" in lines[0]
    accuracy = next(line for line in lines if line.startswith("| test/accuracy "))
    assert f"{tracked_run.metrics['test']['accuracy']:.4f}" in accuracy and accuracy.rstrip(" |").endswith("-")
    rouge = next(line for line in lines if line.startswith("| test/rougeL "))
    saved = json.loads((generation_run / "metrics.json").read_text())["test"]["rougeL"]
    assert f"{saved:.4f}" in rouge or f"{saved:.2f}" in rouge
    code, out, err = cli("compare", tracked_run.run_dir, tmp_path / "missing")
    assert code == 2 and "missing" in err


def test_recipes_lists_each_builtin_recipe(cli):
    code, out, err = cli("recipes")
    assert code == 0, err
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert len(out.splitlines()) == len(names)
    assert any(
        line.startswith("recipes/sentiment.yaml") and "Sentiment classification" in line for line in out.splitlines()
    )


def test_init_writes_a_valid_recipe_with_every_key_commented(cli, tmp_path):
    target = tmp_path / "my.yaml"
    code, out, err = cli("init", "classification", "--model", "bert-base-uncased", "--output", target)
    assert code == 0, err
    text = target.read_text()
    recipe = schema.validate(yaml.safe_load(text))
    assert (
        recipe.model.name == "bert-base-uncased"
        and recipe.task.type == "classification"
        and recipe.output_dir == "runs/my"
    )
    sections = [
        schema.Recipe,
        schema.ModelSpec,
        tasks.TASKS["classification"].options_class,
        schema.DataSpec,
        schema.DataSource,
        schema.LoraMethod,
        schema.IA3Method,
        schema.PrefixTuningMethod,
        schema.Training,
        schema.Evaluation,
    ]
    for cls in sections:
        for name, field in cls.model_fields.items():
            line = next((row for row in text.splitlines() if re.match(rf"\s*(# )?{name}:", row)), None)
            assert line is not None and "  # " in line, f"{cls.__name__}.{name} missing or without a comment"
    code, out, err = cli("init", "classification", "--output", target)
    assert code == 2 and "already exists" in err
    code, out, err = cli("init", "ranking")
    assert code == 2 and "TASK ranking: unknown task" in err and "token_classification" in err


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_step_loss_speed_and_eta_on_a_terminal():
    from llmtune.engine.progress import Progress

    terminal, lines = FakeTerminal(), []
    progress = Progress(10, enabled=True, echo=lines.append, stream=terminal)
    for step in (2, 4):
        progress.update(step, 0.6931, 123.4)
    progress.close()
    shown = terminal.getvalue().split("\r")[-2]
    assert "4/10" in shown and "loss=0.6931" in shown and "123.4" in shown
    assert re.search(r"<\d\d:\d\d", shown), f"no ETA in {shown!r}"
    assert re.search(r"step/s|s/step", shown), f"no speed in {shown!r}"
    assert lines == []


def test_progress_is_plain_lines_when_not_a_terminal():
    from llmtune.engine.progress import Progress

    stream, lines = io.StringIO(), []
    progress = Progress(10, enabled=True, echo=lines.append, stream=stream)
    progress.update(4, 0.6931, 123.4)
    progress.update(10, 0.5, 130.0)
    progress.close()
    assert stream.getvalue() == ""  # no bar, no carriage returns
    assert re.fullmatch(r"step 4/10  loss=0\.6931  123\.4 samples/s  elapsed \d+s  eta \d+s", lines[0])
    assert lines[-1].startswith("step 10/10  loss=0.5000")
