"""benchmarks/seeds.py: the spread of a recipe's metrics over seeds (mean, sample std, min, max), and finished
seeds reused rather than trained again."""

from __future__ import annotations

import json
import statistics
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import seeds  # noqa: E402


def finished_run(work, seed: int, accuracy: float, **extra) -> None:
    run = work / f"seed-{seed}"
    run.mkdir(parents=True)
    metrics = {"train": {"steps": 10}, "validation": {"accuracy": accuracy, "num_examples": 872, **extra}}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_summary_is_mean_sample_std_min_max_of_results_only(tmp_path, monkeypatch):
    for seed, accuracy in zip((1, 2, 3), (0.80, 0.84, 0.90)):
        finished_run(tmp_path, seed, accuracy, macro_f1=float("nan") if seed == 2 else accuracy - 0.1)

    def no_training(*args, **kwargs):  # every seed finished before: nothing may be trained again
        raise AssertionError(f"trained again: {args}")

    monkeypatch.setattr(seeds.subprocess, "run", no_training)
    seeds.main(["recipe.yaml", "--seeds", "1", "2", "3", "--work", str(tmp_path)])
    summary = json.loads((tmp_path / "seeds.json").read_text())["summary"]
    accuracy = summary["validation.accuracy"]
    assert accuracy["mean"] == pytest.approx(0.8466666, abs=1e-6)
    assert accuracy["std"] == pytest.approx(statistics.stdev([0.80, 0.84, 0.90]))  # n - 1: seeds are a sample
    assert (accuracy["min"], accuracy["max"], accuracy["n"]) == (0.80, 0.90, 3)
    assert summary["validation.macro_f1"]["n"] == 2  # a diverged seed's NaN is left out, not averaged in
    assert "validation.num_examples" not in summary and "train.steps" not in summary
    table = (tmp_path / "seeds.md").read_text()
    assert "| validation.accuracy | 0.8000 | 0.8400 | 0.9000 | 0.8467 |" in table


def test_a_seed_given_twice_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        seeds.main(["recipe.yaml", "--seeds", "1", "1", "--work", str(tmp_path)])
