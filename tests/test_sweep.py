"""`llmtune sweep`: Optuna trials that are ordinary runs, pruning on validation, kill and resume, two workers on
one study, and one clear line for a bad space file."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_recipe

from llmtune import load_recipe

pytest.importorskip("optuna")

SPACE = """objective: {metric: cross_entropy}
pruner: median
seed: 3
parameters:
  training.learning_rate: {log_uniform: [1.0e-6, 3.0e-2]}
  training.warmup_ratio: {choice: [0.0, 0.25]}
"""


@pytest.fixture()
def sweep_files(tiny_bert, sentiment_files, tmp_path):
    """A tiny recipe (4 steps, validation after each) and a space over its learning rate and warmup."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_bert, sentiment_files, "evaluation:\n  every_n_steps: 1\n")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return recipe, space


def read_trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_a_sweep_prunes_keeps_every_trial_as_a_run_and_writes_the_best_recipe(sweep_files, tmp_path):
    from llmtune.commands.sweep import run_sweep
    from llmtune.commands.sweep_results import write_sweep_report
    from llmtune.reports.report import compare

    recipe, space = sweep_files
    sweep_dir = tmp_path / "sweep"
    lines = []
    study = run_sweep(recipe, space, sweep_dir, trials=6, echo=lines.append)
    trials = read_trials(sweep_dir)
    states = [row["state"] for row in trials]
    assert len(trials) == 6 and set(states) <= {"complete", "pruned"} and "pruned" in states, trials
    for row in trials:
        run_dir = sweep_dir / row["run"]
        assert (run_dir / "metrics.json").is_file() and (run_dir / "model.safetensors").is_file()
        validations = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        values = [entry["cross_entropy"] for entry in validations if entry.get("split") == "validation"]
        stopped_early = max(logged_steps(run_dir)) < 4
        assert stopped_early == (row["state"] == "pruned")  # a pruned trial stopped at the validation that pruned it
        if row["state"] == "complete":
            assert float(row["value"]) == pytest.approx(min(values[:4]))  # the best validation, not the last
    assert any(line.startswith("trial ") and "pruned after" in line for line in lines)

    best = min((row for row in trials if row["state"] == "complete"), key=lambda row: float(row["value"]))
    assert study.best_trial.number == int(best["trial"])
    winner = load_recipe(sweep_dir / "best.yaml")  # ready for llmtune train: a valid recipe with absolute data paths
    assert winner.training.learning_rate == pytest.approx(float(best["training.learning_rate"]))
    assert winner.training.warmup_ratio == float(best["training.warmup_ratio"])
    assert Path(winner.output_dir) == (sweep_dir / "best").resolve()

    report = write_sweep_report(sweep_dir).read_text()
    assert "![optimization history](optimization_history.png)" in report and "## Trials" in report
    assert (sweep_dir / "optimization_history.png").stat().st_size > 1000
    assert (sweep_dir / best["run"] / "report.md").is_file()
    header, _ = compare([sweep_dir / row["run"] for row in trials[:2]])
    assert header[1:] == [trials[0]["run"], trials[1]["run"]]


def sweep_command(recipe: Path, space: Path, output: Path, *extra: str) -> list[str]:
    code = "from llmtune.cli import main; import sys; sys.argv = ['llmtune'] + sys.argv[1:]; main()"
    return [sys.executable, "-c", code, "sweep", str(recipe), "--space", str(space), "--output", str(output), *extra]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_a_killed_sweep_resumes_and_loses_only_the_trial_in_flight(sweep_files, tmp_path):
    recipe, space = sweep_files
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        sweep_command(recipe, space, sweep_dir, "--trials", "4"),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (sweep_dir / "trial-0002" / "train_log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # during trial 2's training
    process.communicate()
    assert not (sweep_dir / "trial-0002" / "metrics.json").exists()
    finished_before = [row for row in read_trials(sweep_dir) if row["state"] in ("complete", "pruned")]
    assert [row["trial"] for row in finished_before] == ["0", "1"]

    resumed = subprocess.run(
        sweep_command(recipe, space, sweep_dir, "--trials", "4", "--resume"),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = read_trials(sweep_dir)
    by_number = {row["trial"]: row for row in trials}
    assert by_number["2"]["state"] == "fail"  # the trial in flight is lost ...
    retried = next(row for row in trials if int(row["trial"]) > 2)
    assert retried["training.learning_rate"] == by_number["2"]["training.learning_rate"]  # ... and run again
    assert sum(row["state"] in ("complete", "pruned") for row in trials) == 4
    assert by_number["0"] == {**finished_before[0]}  # finished trials are kept as they were
    assert "trial 0:" not in resumed.stdout and "trial 1:" not in resumed.stdout


def test_two_workers_share_one_study_and_never_run_a_trial_twice(sweep_files, tmp_path):
    recipe, space = sweep_files
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    storage = f"sqlite:///{sweep_dir / 'shared.db'}"
    command = sweep_command(recipe, space, sweep_dir, "--trials", "6", "--storage", storage)
    first = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (sweep_dir / "trial-0000").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [worker.communicate(timeout=900) for worker in (first, second)]
    assert [worker.returncode for worker in (first, second)] == [0, 0], [err for _, err in outputs]
    started = [
        {int(line.split()[1].rstrip(":")) for line in out.splitlines() if line.startswith("trial ") and "=" in line}
        for out, _ in outputs
    ]
    trials = read_trials(sweep_dir)
    assert started[0] and started[1] and not started[0] & started[1]  # both contributed, no trial ran twice
    assert started[0] | started[1] == {int(row["trial"]) for row in trials}
    assert sum(row["state"] in ("complete", "pruned") for row in trials) >= 6


@pytest.mark.parametrize(
    "space, message",
    [
        (
            "objective: {metric: cross_entropy}\nparameters:\n  training.learnin_rate: {log_uniform: [1.0e-5, 0.1]}\n",
            "space.yaml:3:3: unknown key 'training.learnin_rate'; did you mean 'learning_rate'?",
        ),
        (
            "objective: {metric: cross_entropy}\nparameters:\n  training.learning_rate: {loguniform: [1.0e-5, 0.1]}\n",
            "space.yaml:3:3: training.learning_rate: unknown distribution 'loguniform'; did you mean 'log_uniform'?",
        ),
        (
            "objective: {metric: acuracy}\nparameters:\n  training.learning_rate: {uniform: [1.0e-5, 1.0e-3]}\n",
            "space.yaml:1:13: objective.metric: 'acuracy' is not a metric of the classification task; "
            "did you mean 'accuracy'?",
        ),
        (
            "objective: {metric: accuracy}\nparameters:\n  training.batch_size: {choice: [8, 0]}\n",
            "space.yaml:3:3: training.batch_size: Input should be greater than or equal to 1",
        ),
        (
            "objective: {metric: accuracy}\nparameters:\n  training.learning_rate: {uniform: [1.0e-3, 1.0e-5]}\n",
            "space.yaml:3:3: training.learning_rate: uniform needs [LOW, HIGH] with LOW < HIGH, got [0.001, 1e-05]",
        ),
        (
            "objectives: {metric: accuracy}\n",
            "space.yaml:1:1: unknown key 'objectives'; did you mean 'objective'?",
        ),
    ],
)
def test_a_bad_space_file_is_one_line_and_writes_nothing(space, message, cli, sweep_files, tmp_path):
    recipe, space_file = sweep_files
    space_file.write_text(space)
    code, out, err = cli("sweep", recipe, "--space", space_file, "--output", tmp_path / "sweep")
    assert code == 2
    assert err.strip().splitlines() == [f"error: {space_file.parent}/{message}"]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("url", "driver", "message"),
    [
        (
            "postgresql+psycopg2://me:secret@localhost/sweeps",
            "psycopg2",
            "--storage postgresql+psycopg2://me:***@localhost/sweeps: the PostgreSQL driver psycopg2 is not installed: "
            "pip install 'psycopg2-binary'",
        ),
        (
            "mysql://me@localhost/sweeps",
            "MySQLdb",
            "the MySQL driver mysqldb is not installed: pip install 'mysqlclient'",
        ),
        (
            "sqlite:////no/such/folder/study.db",
            None,
            "--storage sqlite:////no/such/folder/study.db: cannot open the SQLite file /no/such/folder/study.db "
            "(unable to open database file); its directory must exist and be writable",
        ),
        (
            "nosuch://host/db",
            None,
            "not a storage URL llmtune can open; expected an SQLAlchemy URL such as sqlite:///PATH",
        ),
    ],
    ids=["postgresql", "mysql", "sqlite", "unknown"],
)
def test_a_storage_that_cannot_be_opened_is_one_line_and_leaves_no_sweep(
    url, driver, message, cli, sweep_files, tmp_path, monkeypatch
):
    """The line names the driver to install, or the SQLite file, without SQLAlchemy's link; no empty sweep remains."""
    if driver is not None:  # the case is a driver that is not installed, here even where it is
        monkeypatch.setitem(sys.modules, driver, None)
    recipe, space_file = sweep_files
    code, out, err = cli("sweep", recipe, "--space", space_file, "--storage", url, "--output", tmp_path / "sweep")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "sqlalche.me" not in err and "secret" not in err
    assert not (tmp_path / "sweep").exists()
