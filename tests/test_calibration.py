"""Calibration: expected calibration error, temperature scaling (fit, recipe, calibrate command) and the report's
"Can I trust this?" section."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import write_recipe

from llmtune.tasks.calibration import calibration_bins, expected_calibration_error, fit_temperature


def test_ece_matches_a_hand_computed_case():
    # Bins of width 1/15. 0.9 lies in (13/15, 14/15]: two rows, one right: |0.5 - 0.9| = 0.4, weight 2/5.
    # 0.6 lies in (8/15, 9/15]: two rows, both right: |1 - 0.6| = 0.4, weight 2/5.
    # 0.2 lies in (2/15, 3/15]: one row, wrong: |0 - 0.2| = 0.2, weight 1/5.
    confidences = [0.9, 0.9, 0.6, 0.6, 0.2]
    correct = [1, 0, 1, 1, 0]
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.4 * 2 / 5 + 0.4 * 2 / 5 + 0.2 / 5)
    bins = calibration_bins(confidences, correct)
    assert len(bins) == 15 and [count for *_, count in bins] == [0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0]
    # A bin's upper edge belongs to it: 1/15 is the first bin, 1.0 the last.
    assert [count for *_, count in calibration_bins([1 / 15, 1.0], [1, 1])][::14] == [1, 1]
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 4, generator=generator)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits.log_softmax(-1), labels) == pytest.approx(2.5, rel=0.06)
    # An overconfident model's temperature is above 1 and lowers its ECE.
    fitted = fit_temperature(logits.log_softmax(-1), labels)
    top = lambda scale: (logits / scale).softmax(-1).max(-1)  # noqa: E731
    right = (top(1).indices == labels).float().tolist()
    assert (
        expected_calibration_error(top(fitted).values.tolist(), right)
        < expected_calibration_error(top(1).values.tolist(), right) / 2
    )


@pytest.fixture()
def trained_run(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "training.learning_rate=1e-3")
    assert code == 0, err
    return tmp_path / "run"


def test_predict_applies_the_runs_temperature(trained_run):
    from llmtune.inference.prediction import predict
    from llmtune.inference.saved import load_run

    texts = ["a wonderful, moving film", "a waste of money", "something else entirely"]
    plain = predict(load_run(trained_run), texts)
    scaled = predict(load_run(trained_run, ["task.temperature=3"]), texts)
    for before, after in zip(plain, scaled):
        names = list(before["probabilities"])
        expected = (torch.tensor([before["probabilities"][n] for n in names]).double().log() / 3).softmax(-1)
        assert [after["probabilities"][n] for n in names] == pytest.approx(expected.tolist(), abs=2e-6)
        assert after["predicted"] == before["predicted"]  # scaling never changes the label
        assert after["score"] == pytest.approx(max(expected.tolist()), abs=2e-6)


def test_metrics_json_has_ece_per_split(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert 0 <= metrics[split]["ece"] <= 1
    # The test split's ECE is the one its prediction rows give.
    rows = [json.loads(line) for line in (trained_run / "predictions.jsonl").read_text().splitlines()]
    confidences = [row["score"] for row in rows]
    correct = [float(row["predicted"] == row["reference"]) for row in rows]
    assert metrics["test"]["ece"] == pytest.approx(expected_calibration_error(confidences, correct), abs=1e-5)


def test_calibrate_command_round_trip(cli, trained_run):
    code, out, err = cli("calibrate", trained_run)
    assert code == 0, err
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    temperature = recipe["task"]["temperature"]
    assert temperature > 0 and f"temperature: {temperature:.4f} (was 1.0000)" in out
    lines = {line.split(":")[0]: line for line in out.splitlines() if line.startswith(("validation:", "test:"))}
    assert set(lines) == {"validation", "test"}
    accuracy = lines["test"].split("accuracy ")[1].split(" -> ")
    assert accuracy[0] == accuracy[1]  # temperature scaling keeps every prediction
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["validation"]["calibration"]["temperature"] == temperature
    after = float(lines["validation"].split("ECE ")[1].split(" -> ")[1].split()[0])
    assert metrics["validation"]["ece"] == pytest.approx(after, abs=1e-4)
    # eval now scores with the temperature: its ECE is the calibrated one.
    code, out, err = cli("eval", trained_run, "--split", "validation")
    assert code == 0, err
    assert f"ece={metrics['validation']['ece']:.4f}" in out
    # Calibrating again fits on calibrated probabilities: the temperature hardly moves (it composes, not resets).
    code, out, err = cli("calibrate", trained_run)
    assert code == 0, err
    again = yaml.safe_load((trained_run / "recipe.yaml").read_text())["task"]["temperature"]
    assert again == pytest.approx(temperature, rel=1e-3)


def test_recipe_calibrate_fits_the_temperature_after_training(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files, "")
    code, out, err = cli("train", recipe, "--set", "training.learning_rate=1e-3", "--set", "task.calibrate=true")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["task"]
    assert saved["calibrate"] is True and saved["temperature"] > 0
    assert f"temperature scaling: T={saved['temperature']:.4f}" in out + err


def test_report_has_the_trust_section(cli, trained_run):
    (trained_run / "label_issues.csv").write_text(
        "row,location,given_label,suggested_label,score,flagged,text\n"
        "3,line 5,positive,negative,0.01,True,a waste of money\n"
        "0,line 2,positive,positive,0.9,False,a wonderful film\n"
    )
    code, out, err = cli("report", trained_run)
    assert code == 0, err
    page = (trained_run / "report.html").read_text()
    trust = page.split("<h2>Can I trust this?</h2>", 1)[1]
    assert 'alt="reliability.png"' in trust and "Expected calibration error" in trust
    assert "flagged 1 of 2 training rows" in trust and "a waste of money" in trust
    assert "leakage" in trust and "llmtune compare" in trust
    # the fixture's splits repeat the same reviews: the leakage audit's table and examples are in this section
    assert "Rows of a later split that also appear in an earlier one" in trust and "train/test" in trust
    assert "reliability.png" not in page.split("<h2>Can I trust this?</h2>", 1)[0]  # shown once, in this section
    code, out, err = cli("report", trained_run, "--format", "md")
    assert code == 0, err
    markdown = (trained_run / "report.md").read_text().split("## Can I trust this?", 1)[1]
    assert "![reliability](reliability.png)" in markdown and (trained_run / "reliability.png").is_file()


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("task.temperature=0", "task.temperature"),
        ("task.calibrate=true", "task.calibrate: temperature scaling is fitted on the validation split"),
    ],
)
def test_bad_calibration_settings_fail_in_one_line(cli, tiny_bert, sentiment_files, tmp_path, setting, expected):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("validate", recipe, "--set", setting, "--set", "data.validation=null")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_calibrate_refuses_what_it_cannot_calibrate_in_one_line(cli, trained_run, tmp_path):
    code, out, err = cli("calibrate", tmp_path / "nowhere")
    assert code == 2 and "no such run directory" in err and len(err.strip().splitlines()) == 1
    text = (trained_run / "recipe.yaml").read_text()
    raw = yaml.safe_load(text)
    raw["data"]["validation"] = None
    (trained_run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("calibrate", trained_run)
    assert code == 2 and "no data.validation" in err and len(err.strip().splitlines()) == 1


def test_card_of_a_calibrated_run_lists_ece_and_its_snippet_applies_the_temperature(cli, trained_run):
    from test_hub import card_of, card_snippet, run_snippet

    from llmtune import predict

    code, out, err = cli("calibrate", trained_run)
    assert code == 0, err
    temperature = yaml.safe_load((trained_run / "recipe.yaml").read_text())["task"]["temperature"]
    card = card_of(trained_run)
    header = next(line for line in card.splitlines() if line.startswith("| split |"))
    assert "ECE (15 bins)" in header
    snippet = card_snippet(card)
    assert f"logits / {temperature!r}" in snippet
    printed = run_snippet(snippet, {'"acme/card"': repr(str(trained_run))})
    expected = predict(trained_run, ["an example text"])[0]["probabilities"]
    assert printed == str({label: round(p, 4) for label, p in expected.items()})


def test_the_trust_checks_are_in_the_python_api(trained_run):
    """validate, calibrate, audit and significance from Python, as their commands do them."""
    import llmtune

    prepared = llmtune.validate(llmtune.load_recipe(trained_run / "recipe.yaml"))
    assert prepared.leakage["train/test"].exact_rows  # the fixture's splits repeat the same reviews
    import llmtune.commands.audit  # noqa: F401  (binds the module on the package: the API names must not be shadowed)
    import llmtune.commands.calibrate  # noqa: F401

    calibration = llmtune.calibrate_run(trained_run)
    assert calibration.temperature > 0 and "validation" in calibration.ece
    issues = llmtune.find_label_issues(trained_run, reuse_run=True)
    assert issues.csv_path == trained_run / "label_issues.csv" and issues.csv_path.is_file()
    split, rows, best, differences = llmtune.significance([trained_run, trained_run], ["a", "b"])
    assert (split, best) == ("test", "a") and rows > 0
    assert all(not difference.significant for difference in differences["b"])  # a run against itself
