"""`llmtune sweep`: hyper-parameter search with Optuna, each trial an ordinary training run.

A space file names recipe keys and their distributions, and the objective:

    objective: {metric: accuracy, direction: maximize}   # a validation metric of the task
    pruner: median                                       # median | successive_halving | none
    seed: 42                                             # TPE sampler seed
    parameters:
      training.learning_rate: {log_uniform: [1.0e-5, 5.0e-4]}
      training.warmup_ratio: {uniform: [0.0, 0.2]}
      method.r: {int: [4, 32]}
      training.scheduler: {choice: [linear, cosine]}

Trials are TPE-sampled; every validation during a trial's training reports to the pruner, which may stop the
trial there (the run still finishes and is kept); a trial's value is its best validation value. The study lives
in SQLite inside the sweep directory (or in any storage URL Optuna accepts, shared by workers on several
machines): a sweep killed at any point continues with --resume and loses at most the trial in flight, which is
run again. The sweep directory holds one run directory per trial (trial-0000, ...), trials.csv / trials.md,
best.yaml (the winning recipe, ready for `llmtune train`) and sweep.json.
The space file is sweep_space.py's, the study's storage sweep_storage.py's, what the directory shows
sweep_results.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..common import runs
from ..common.errors import UserError
from .sweep_results import is_sweep_dir, write_results
from .sweep_space import Space, load_space
from .sweep_storage import STUDY_NAME, open_study, redacted


def run_sweep(
    recipe_path: Path,
    space_path: Path,
    output: Path,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    echo=print,
):
    """Run trials until the study holds `trials` finished ones (complete or pruned) or `timeout` seconds pass;
    returns the Optuna study. Several workers may share one study through `storage`.

    Raises:
        UserError: a bad space file or recipe, a sweep directory that holds another sweep (without resume), or a
            storage that cannot be opened.
    """
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UserError("llmtune sweep needs Optuna: pip install 'llmtune[sweep]'")
    import optuna

    overrides = list(overrides or [])
    space = load_space(space_path, recipe_path, overrides)
    check_sweep_dir(output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(space, output, storage, resume)
    except UserError:
        if created and not any(output.iterdir()):  # a storage that cannot be opened leaves no empty sweep behind
            output.rmdir()
        raise
    runs.write_json(output / runs.SWEEP_FILE, sweep_description(recipe_path, space_path, space, storage, overrides))
    done = finished(study)
    if done >= trials:
        echo(f"the study already holds {done} finished trials (--trials {trials}); nothing to run")
    else:
        objective = make_objective(recipe_path, overrides, space, output, echo)
        failures = []

        def after_trial(study, trial) -> None:
            write_results(study, output)
            if trial.state == optuna.trial.TrialState.FAIL:
                failures.append(trial.number)
            if len(failures) >= max(3, trials):  # every draw failing is no search: stop instead of looping
                study.stop()

        study.optimize(
            objective,
            timeout=timeout,
            catch=(UserError,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished_states()), after_trial],
        )
    write_results(study, output)
    return study


def check_sweep_dir(output: Path) -> None:
    """A sweep writes into a new or empty directory, or one of its own (resumed, or shared by workers)."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: is a file; a sweep needs a directory")
    if output.is_dir() and any(output.iterdir()) and not (is_sweep_dir(output) or (output / "study.db").exists()):
        kind = runs.output_kind(output)
        what = f"{runs.with_article(kind)} ({runs.KIND_COMMANDS[kind]})" if kind else "other files"
        raise UserError(f"--output {output}: holds {what}; choose a new or empty directory for the sweep")


def finished_states() -> tuple:
    """The trial states that count towards --trials."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=finished_states()))


def sweep_description(recipe_path: Path, space_path: Path, space: Space, storage, overrides) -> dict:
    return {
        "recipe": str(Path(recipe_path).resolve()),
        "space": str(Path(space_path).resolve()),
        "overrides": overrides,
        "storage": redacted(storage) if storage else "study.db",
        "study_name": STUDY_NAME,
        "metric": space.metric,
        "direction": space.direction,
        "pruner": space.pruner,
        "seed": space.seed,
    }


def suggest(trial, key: str, kind: str, args: list):
    if kind == "choice":
        return trial.suggest_categorical(key, args)
    if kind == "int":
        return trial.suggest_int(key, args[0], args[1])
    return trial.suggest_float(key, args[0], args[1], log=kind == "log_uniform")


def make_objective(recipe_path: Path, overrides: list[str], space: Space, output: Path, echo):
    """Optuna's objective: one training run per trial in SWEEP/trial-NNNN, scored by its best validation value."""
    import optuna

    from ..engine.training import train
    from ..recipe import load_recipe

    def objective(trial) -> float:
        values = {key: suggest(trial, key, *spec) for key, spec in space.parameters.items()}
        run_dir = output / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))  # workers may write to different directories
        shown = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()
        )
        echo(f"trial {trial.number}: {shown}")
        recipe = load_recipe(recipe_path, [*overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items())])
        seen: list[float] = []

        def on_validation(step: int, metrics: dict) -> bool:
            seen.append(float(metrics[space.metric]))
            trial.report(seen[-1], step)
            return trial.should_prune()

        try:
            train(recipe, output_dir=run_dir, on_validation=on_validation)
        except UserError as error:
            echo(f"trial {trial.number}: failed: {error}")
            raise
        best = (max if space.direction == "maximize" else min)(seen)
        if trial.should_prune():
            echo(f"trial {trial.number}: pruned after {len(seen)} validation(s), best {space.metric}={best:.4f}")
            raise optuna.TrialPruned()
        echo(f"trial {trial.number}: {space.metric}={best:.4f}")
        return best

    return objective
