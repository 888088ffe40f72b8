"""Significance in `llmtune compare`: a paired bootstrap over the rows both runs were scored on, with each task's
corpus metrics recomputed per resample from per-row statistics (Task.row_statistics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_recipe

from llmtune import tasks
from llmtune.reports import significance
from llmtune.tasks.base import RowStatistics, mean_of_columns


def default_task():
    """A task whose corpus metrics are means of its per-example ones (extractive QA): the contract's default."""
    options = tasks.TASKS["question_answering"].options_class(type="question_answering")
    return tasks.TASKS["question_answering"].create(options)


def correct_rows(correct: list[bool]) -> RowStatistics:
    """A run's rows scored only by whether each is correct (the default contract: means of per-example metrics)."""
    return default_task().row_statistics([{"metrics": {"correct": float(c)}} for c in correct])


def correlated_runs(rows: int = 1000, better_by: int = 30):
    """Two runs right on the same 70% of the rows; the second is also right on `better_by` more rows."""
    first = [i % 10 < 7 for i in range(rows)]
    second = [c or (not c and i < better_by * 10 and i % 10 == 7) for i, c in enumerate(first)]
    assert sum(second) - sum(first) == better_by
    return correct_rows(first), correct_rows(second)


def unpaired_p_value(first: RowStatistics, second: RowStatistics, resamples: int = 2000) -> float:
    """What a bootstrap that resamples each run on its own would say (the mistake the paired test avoids)."""
    a = next(significance.resample_counts(len(first.values), resamples, 1)) @ first.values
    b = next(significance.resample_counts(len(second.values), resamples, 2)) @ second.values
    differences = (first.combine(a) - second.combine(b))[:, 0]
    return 2 * min(np.mean(differences <= 0), np.mean(differences >= 0))


def test_the_bootstrap_is_paired_so_shared_rows_cancel():
    """The runs differ on 30 of 1,000 rows and agree on the rest: resampling both with the same rows makes the 3-point
    gain certain, while resampling them apart drowns it in each run's own noise."""
    first, second = correlated_runs()
    (result,) = significance.paired_bootstrap(first, second)
    assert result.metric == "correct" and result.difference == pytest.approx(-0.03)
    assert result.significant and result.p_value < 0.001 and result.high < 0
    assert unpaired_p_value(first, second) > 0.05  # the same difference, tested unpaired, is not significant


def test_the_bootstrap_is_seeded_and_no_difference_is_not_significant():
    """Runs that disagree on 83 of 1,000 rows, 43 to 40: a 0.3-point difference that resampling turns around."""
    first = [i % 10 < 7 for i in range(1000)]
    second = [(c and not (i < 400 and i % 10 == 0)) or (i < 430 and i % 10 == 7) for i, c in enumerate(first)]
    first, second = correct_rows(first), correct_rows(second)
    once, again = significance.paired_bootstrap(first, second), significance.paired_bootstrap(first, second)
    assert once == again
    other_seed = significance.paired_bootstrap(first, second, seed=7)
    assert (other_seed[0].low, other_seed[0].p_value) != (once[0].low, once[0].p_value)
    assert once[0].difference == pytest.approx(-0.003)
    assert not once[0].significant and once[0].low < 0 < once[0].high and once[0].p_value > 0.5
    (same,) = significance.paired_bootstrap(first, first)
    assert same.difference == 0 and same.p_value == 1.0


def test_corpus_metrics_that_are_not_means_are_recomputed_from_row_statistics():
    """Macro-F1 from per-class counts matches scikit-learn's on the rows (a label never seen counts as 0)."""
    from sklearn.metrics import f1_score

    task = tasks.TASKS["classification"].create(
        tasks.TASKS["classification"].options_class(type="classification", label_names=["neg", "neu", "pos"])
    )
    references = ["neg", "pos", "pos", "neg", "pos", "neg", "pos"]
    predicted = ["neg", "pos", "neg", "neg", "neg", "pos", "pos"]
    rows = [
        {"reference": r, "predicted": p, "metrics": {"correct": float(r == p), "cross_entropy": 0.5}}
        for r, p in zip(references, predicted)
    ]
    metrics = task.corpus_metrics(rows)
    labels = ["neg", "neu", "pos"]
    expected = f1_score(references, predicted, average="macro", labels=labels, zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(expected) and metrics["accuracy"] == pytest.approx(4 / 7)
    statistics = task.row_statistics(rows)
    resample = np.array([[2, 0, 1, 0, 3, 0, 1]], dtype=float)  # a resample is a vector of row counts
    drawn = [i for i, count in enumerate(resample[0]) for _ in range(int(count))]
    expected = f1_score(
        [references[i] for i in drawn], [predicted[i] for i in drawn], average="macro", labels=labels, zero_division=0
    )
    assert statistics.combine(resample @ statistics.values)[0, 1] == pytest.approx(expected)


def test_entity_f1_is_micro_over_entities_not_a_mean_of_sentences():
    task = tasks.TASKS["token_classification"].create(
        tasks.TASKS["token_classification"].options_class(type="token_classification", label_names=["O"])
    )
    person = {"type": "person", "start": 0, "end": 1}
    place = {"type": "location", "start": 2, "end": 3}
    rows = [
        {"reference": [person, place], "predicted": [person], "metrics": {}},
        {"reference": [], "predicted": [place], "metrics": {}},
    ]
    metrics = task.corpus_metrics(rows)  # hits 1, found 2, gold 2
    assert metrics == pytest.approx({"f1": 50.0, "precision": 50.0, "recall": 50.0})


def test_the_default_statistics_are_means_of_the_per_example_metrics():
    rows = [{"metrics": {"exact_match": 100.0, "f1": 100.0}}, {"metrics": {"exact_match": 0.0, "f1": 50.0}}]
    statistics = default_task().row_statistics(rows)
    assert statistics.combine is mean_of_columns
    assert statistics.metrics(statistics.values.sum(0)) == {"exact_match": 50.0, "f1": 75.0}


# ------------------------------------------------------------------ the command


def fake_run(folder, recipe, correct: list[bool], references: list[str] | None = None):
    """A finished classification run directory with predictions.jsonl scored as `correct` says."""
    folder.mkdir()
    (folder / "recipe.yaml").write_text(recipe.read_text())
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": sum(correct) / len(correct)}}))
    references = references or ["positive" if i % 2 else "negative" for i in range(len(correct))]
    other = {"positive": "negative", "negative": "positive"}
    rows = [
        {
            "index": i,
            "inputs": {"text": f"review {i}"},
            "reference": reference,
            "predicted": reference if right else other[reference],
            "score": 0.9,
            "metrics": {"correct": float(right), "cross_entropy": 0.2 if right else 2.0},
        }
        for i, (reference, right) in enumerate(zip(references, correct))
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture()
def recipe(tmp_path, sentiment_files):
    recipe = write_recipe(tmp_path / "r.yaml", "some-model", sentiment_files, "")
    # a finished run's recipe holds the label names the data settled
    recipe.write_text(
        recipe.read_text().replace("type: classification", "type: classification\n  label_names: [negative, positive]")
    )
    return recipe


def test_compare_tests_each_run_against_the_best(cli, tmp_path, recipe):
    base = [i % 4 != 0 for i in range(400)]  # 75% right
    best = fake_run(tmp_path / "best", recipe, [c or i % 8 == 0 for i, c in enumerate(base)])  # 87.5%
    close = fake_run(tmp_path / "close", recipe, [c or i == 0 for i, c in enumerate(base)])
    worse = fake_run(tmp_path / "worse", recipe, base)
    code, out, err = cli("compare", close, best, worse, "--resamples", "2000")
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("paired bootstrap"))
    assert lines[start] == (
        "paired bootstrap on 400 test rows (2,000 resamples, seed 0): each run minus the best run, best, "
        "with a 95% interval and a two-sided p-value"
    )
    accuracy = [line for line in lines[start:] if ": accuracy " in line]
    assert [line.split(":")[0] for line in accuracy] == ["close vs best", "worse vs best"]
    assert all(line.endswith("(significant)") for line in accuracy), accuracy
    assert "accuracy -0.1225 [" in accuracy[0] and "accuracy -0.1250 [" in accuracy[1]
    code, out, err = cli("compare", worse, fake_run(tmp_path / "twin", recipe, base[1:] + base[:1]))
    assert code == 0, err
    assert out.splitlines()[-1].startswith("twin vs worse: not significant at p<0.05 (accuracy +0.0000 (p=1.000)")


def test_runs_scored_on_different_rows_are_refused_in_one_line(cli, tmp_path, recipe):
    correct = [True, False] * 20
    first = fake_run(tmp_path / "a", recipe, correct)
    fewer = fake_run(tmp_path / "b", recipe, correct[:-2])
    relabelled = fake_run(tmp_path / "c", recipe, correct, ["positive"] * 40)
    for other in (fewer, relabelled):
        code, out, err = cli("compare", first, other, "--significance")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: compare: no paired significance test: ") and "different rows" in err
    code, out, err = cli("compare", first, fewer)  # without --significance: the table, and why there is no test
    assert code == 0 and out.startswith("| metric") and "paired bootstrap" not in out
    assert err.startswith("warning: compare: no paired significance test:")


def test_row_statistics_reproduce_a_real_runs_corpus_metrics(cli, tiny_bert, sentiment_files, tmp_path):
    """What compare resamples must be what evaluation reported: the task's statistics of the run's own rows give
    metrics.json's test metrics."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "training.max_steps=2", "--set", "training.learning_rate=1e-3")
    assert code == 0, err
    task, split, rows = significance.scored_rows(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())[split]
    recomputed = task.corpus_metrics(rows)
    assert split == "test" and set(recomputed) == {"accuracy", "macro_f1", "cross_entropy"}
    assert recomputed == pytest.approx({name: saved[name] for name in recomputed}, abs=1e-6)


def test_bleu_and_chrf_are_recomputed_from_summed_ngram_counts_as_sacrebleu_does():
    sacrebleu = pytest.importorskip("sacrebleu")
    task = tasks.TASKS["translation"].create(
        tasks.TASKS["translation"].options_class(type="translation", source_lang="en", target_lang="de")
    )
    references = ["Ein Hund läuft über die Wiese.", "Zwei Männer spielen Gitarre.", "Eine Frau liest ein Buch."]
    predicted = ["Ein Hund rennt über die Wiese.", "Männer spielen.", "Die Frau liest ein Buch im Park."]
    # shorter than its reference (brevity penalty) with no matching 4-gram (smoothed)
    references.append("Ein Hund schläft auf dem alten Sofa am Morgen.")
    predicted.append("Eine Katze schläft auf dem Sofa.")
    references.append("Ja, sicher.")  # too short for chrF's longer character n-grams: those orders are left out
    predicted.append("Ja.")
    rows = [{"predicted": p, "reference": [r], "metrics": {}} for p, r in zip(predicted, references)]

    def expected(hypotheses, golds):
        return [sacrebleu.corpus_bleu(hypotheses, [golds]).score, sacrebleu.corpus_chrf(hypotheses, [golds]).score]

    assert list(task.corpus_metrics(rows).values()) == pytest.approx(expected(predicted, references))
    statistics = task.row_statistics(rows)
    for counts in ([2, 0, 1, 0, 0], [0, 3, 0, 0, 0], [1, 1, 5, 1, 1], [0, 0, 0, 2, 0], [0, 0, 0, 0, 2]):  # resamples
        drawn = [i for i, count in enumerate(counts) for _ in range(count)]
        recomputed = statistics.combine(np.array([counts], dtype=float) @ statistics.values)[0]
        assert list(recomputed) == pytest.approx(
            expected([predicted[i] for i in drawn], [references[i] for i in drawn])
        )


def test_regression_corpus_metrics_resample_from_sums():
    """Pearson, MSE and MAE of any resample come from summed per-row statistics, as scipy and numpy compute them."""
    from scipy.stats import pearsonr

    from llmtune.tasks.regression import Regression, RegressionOptions

    generator = np.random.default_rng(0)
    reference = generator.uniform(0, 5, 300)
    predicted = reference + generator.normal(0, 0.8, 300)
    rows = [{"predicted": float(p), "reference": float(r)} for p, r in zip(predicted, reference)]
    statistics = Regression(RegressionOptions(type="regression")).row_statistics(rows)
    resample = generator.integers(0, 300, 300)
    got = statistics.metrics(statistics.values[resample].sum(0))
    assert got["pearson"] == pytest.approx(pearsonr(predicted[resample], reference[resample])[0], abs=1e-9)
    assert got["mse"] == pytest.approx(np.mean((predicted[resample] - reference[resample]) ** 2), abs=1e-9)
    assert got["mae"] == pytest.approx(np.mean(np.abs(predicted[resample] - reference[resample])), abs=1e-9)
