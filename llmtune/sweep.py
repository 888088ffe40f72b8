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
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .common import runs
from .common.errors import UserError

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
PRUNERS = ("median", "successive_halving", "none")
SPACE_KEYS = ("objective", "pruner", "seed", "parameters")
STUDY_NAME = "llmtune-sweep"
SWEEP_FILE = "sweep.json"
LOWER_IS_BETTER = ("cross_entropy", "perplexity", "mse", "mae")


@dataclass
class Space:
    metric: str
    direction: str  # maximize | minimize
    pruner: str
    seed: int
    parameters: dict[str, tuple[str, list]] = field(default_factory=dict)  # recipe key -> (distribution, args)


# ---------------------------------------------------------------------------------------------- the space file


def load_space(path: Path, recipe_path: Path, overrides: list[str]) -> Space:
    """Read and check a space file against the recipe: every key must be a recipe key that accepts the values the
    distribution can draw, and the objective a validation metric of the recipe's task.

    Raises:
        UserError: the first problem, with the space file's line and column.
    """
    from .recipe import load_recipe, yaml_location

    root, raw = _read_yaml(path)
    where = lambda *keys: yaml_location(keys, str(path), root)  # noqa: E731
    if not isinstance(raw, dict):
        raise UserError(f"{path}:1:1: expected a mapping with {', '.join(SPACE_KEYS)}")
    for key in raw:
        if key not in SPACE_KEYS:
            raise UserError(f"{where(key)}: unknown key '{key}'; {_suggest(str(key), SPACE_KEYS)}")
    recipe = load_recipe(recipe_path, overrides)
    if recipe.data.validation is None:
        raise UserError(f"{recipe_path}: data.validation: a sweep needs a validation split to score its trials")
    metric, direction = _objective(raw.get("objective"), recipe, where)
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise UserError(f"{where('pruner')}: pruner: unknown value {pruner!r}; expected one of {', '.join(PRUNERS)}")
    seed = raw.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where('seed')}: seed: expected an integer, got {seed!r}")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UserError(f"{where('parameters')}: parameters: expected a mapping of recipe keys to distributions")
    space = Space(metric, direction, pruner, seed)
    for key, spec in parameters.items():
        space.parameters[str(key)] = _distribution(str(key), spec, where("parameters", key))
        for value in _extremes(*space.parameters[str(key)]):
            _check_key(recipe_path, overrides, str(key), value, where("parameters", key))
    return space


def _read_yaml(path: Path):
    try:
        text = Path(path).read_text(encoding="utf-8")
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the space file: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(options)}"


def _objective(raw, recipe, where) -> tuple[str, str]:
    if not isinstance(raw, dict) or "metric" not in raw:
        raise UserError(f"{where('objective')}: objective: expected {{metric: NAME, direction: maximize|minimize}}")
    metric = raw["metric"]
    available = recipe.task.available_metrics
    if metric not in available:
        raise UserError(
            f"{where('objective', 'metric')}: objective.metric: {metric!r} is not a metric of the "
            f"{recipe.task.type} task; {_suggest(str(metric), available)}"
        )
    direction = raw.get("direction", "minimize" if metric in LOWER_IS_BETTER else "maximize")
    if direction not in ("maximize", "minimize"):
        raise UserError(f"{where('objective', 'direction')}: objective.direction: expected maximize or minimize")
    unknown = set(raw) - {"metric", "direction"}
    if unknown:
        raise UserError(f"{where('objective')}: objective: unknown key '{sorted(unknown)[0]}'")
    return metric, direction


def _distribution(key: str, spec, where: str) -> tuple[str, list]:
    """(kind, arguments) of one parameter, checked."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        if isinstance(spec, dict) and len(spec) == 1:
            name = str(next(iter(spec)))
            raise UserError(f"{where}: {key}: unknown distribution {name!r}; {_suggest(name, DISTRIBUTIONS)}")
        raise UserError(
            f"{where}: {key}: expected one of {{log_uniform: [LOW, HIGH]}}, {{uniform: [LOW, HIGH]}}, "
            f"{{int: [LOW, HIGH]}} or {{choice: [...]}}, got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: {key}: choice needs a non-empty list of values")
        return kind, args
    numbers = isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)
    if not numbers or not args[0] < args[1]:
        raise UserError(f"{where}: {key}: {kind} needs [LOW, HIGH] with LOW < HIGH, got {args!r}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{where}: {key}: int needs whole numbers, got {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise UserError(f"{where}: {key}: log_uniform needs LOW > 0, got {args[0]!r}")
    return kind, [float(a) for a in args] if kind != "int" else args


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _extremes(kind: str, args: list) -> list:
    return args if kind == "choice" else [args[0], args[1]]


def _check_key(recipe_path: Path, overrides: list[str], key: str, value, where: str) -> None:
    """The recipe accepts `key` = `value` (an unknown key, a wrong type or an out-of-range value is refused)."""
    from .recipe import load_recipe

    item = f"{key}={json.dumps(value)}"
    try:
        load_recipe(recipe_path, [*overrides, item])
    except UserError as error:
        first = str(error).splitlines()[0].removeprefix(f"--set {item}: ")
        raise UserError(f"{where}: {first}") from None


# ---------------------------------------------------------------------------------------------- the search


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
    runs.write_json(output / SWEEP_FILE, sweep_description(recipe_path, space_path, space, storage, overrides))
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


def open_study(space: Space, output: Path, storage: str | None, resume: bool):
    """The study in `storage` (default: SQLite in the sweep directory). A worker joining a shared storage loads
    the study; the default storage needs --resume to continue one. Trials of a worker that died are failed
    (after the heartbeat's grace period, or at once on --resume of the default storage) and run again."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial says what it did in one line of its own
    database = output / "study.db"
    if storage is None and database.exists() and not resume:
        raise UserError(f"{output}: already holds a sweep; continue it with --resume or choose another --output")
    if storage is None and resume and not database.exists():
        raise UserError(f"{output}: no sweep to resume here (no study.db)")
    url = storage or f"sqlite:///{database.resolve()}"
    with warnings.catch_warnings():  # Optuna marks its heartbeat (and the retry built on it) experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = RDBStorage(url, heartbeat_interval=10, grace_period=30, heartbeat_stale_trial_callback=retry)
        exists = STUDY_NAME in optuna.study.get_all_study_names(rdb)
    except Exception as exc:  # any driver or URL problem: the URL is the user's input
        raise UserError(f"--storage {redacted(url)}: {storage_problem(url, exc)}") from None
    study = optuna.create_study(
        storage=rdb,
        study_name=STUDY_NAME,
        direction=space.direction,
        sampler=optuna.samplers.TPESampler(seed=space.seed),
        pruner=make_pruner(space.pruner),
        load_if_exists=True,
    )
    if exists:
        # A continued or joined study must not replay the first worker's draws: the seed moves on with the number
        # of trials so far (and, for a shared storage, with the worker's process id).
        offset = len(study.get_trials(deepcopy=False)) + (os.getpid() if storage else 0)
        study.sampler = optuna.samplers.TPESampler(seed=space.seed + offset)
    if resume and storage is None:  # nobody else uses this directory's study: its running trials died with the sweep
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            retry(study, study._storage.get_trial(trial._trial_id))
    return study


# Database names and the pip package of each SQLAlchemy driver, for "install the driver" messages.
DIALECTS = {
    "postgresql": "PostgreSQL",
    "mysql": "MySQL",
    "mariadb": "MariaDB",
    "oracle": "Oracle",
    "mssql": "SQL Server",
}
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysqlconnector": "mysql-connector-python",
    "mariadbconnector": "mariadb",
    "oracledb": "oracledb",
    "cx_oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


def storage_problem(url: str, error: Exception) -> str:
    """Why a storage URL cannot be opened, in one line: the driver to install, the SQLite file that cannot be
    opened, or SQLAlchemy's own words without its "Background on this error" link."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except Exception:  # not a URL, or a database SQLAlchemy has no dialect for
        return (
            "not a storage URL llmtune can open; expected an SQLAlchemy URL such as sqlite:///PATH, "
            "postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
        )
    causes = [error]
    while causes[-1].__cause__ or causes[-1].__context__:
        causes.append(causes[-1].__cause__ or causes[-1].__context__)
    if any(isinstance(cause, ImportError) for cause in causes):
        database = DIALECTS.get(backend, backend)
        package = DRIVER_PACKAGES.get(driver, driver)
        return (
            f"the {database} driver {driver} is not installed: pip install '{package}' "
            f"(or name an installed driver in the URL, e.g. {backend}+DRIVER://...)"
        )
    words = " ".join(str(error).split())
    words = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", words)
    words = re.sub(r"^\([\w.]+\)\s*", "", words)  # SQLAlchemy's "(sqlite3.OperationalError) " prefix
    if backend == "sqlite":
        return f"cannot open the SQLite file {parsed.database} ({words}); its directory must exist and be writable"
    return f"cannot open it: {words[:200]}"


def make_pruner(name: str):
    import optuna

    if name == "median":  # a trial is stopped when its value is worse than the median of earlier trials' there
        return optuna.pruners.MedianPruner(n_startup_trials=2)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def redacted(url: str) -> str:
    """A storage URL without its password (it is printed and written)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: show the scheme only
        return url.split("://", 1)[0] + "://..."


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

    from .engine.training import train
    from .recipe import load_recipe

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


# ---------------------------------------------------------------------------------------------- results


def trial_rows(study) -> tuple[list[str], list[list]]:
    keys = list(dict.fromkeys(key for trial in study.get_trials(deepcopy=False) for key in trial.params))
    header = ["trial", "state", "value", *keys, "seconds", "run"]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else ""
        rows.append(
            [
                trial.number,
                trial.state.name.lower(),
                "" if trial.value is None else round(trial.value, 6),
                *(trial.params.get(key, "") for key in keys),
                round(seconds, 1) if seconds != "" else "",
                Path(trial.user_attrs["run_dir"]).name if "run_dir" in trial.user_attrs else "",
            ]
        )
    return header, rows


def shown_rows(rows: list[list]) -> list[list[str]]:
    """Table cells for people: floats to 4 significant digits (trials.csv keeps them whole)."""
    return [[f"{cell:.4g}" if isinstance(cell, float) else str(cell) for cell in row] for row in rows]


def write_results(study, output: Path) -> None:
    """trials.csv, trials.md and best.yaml (atomically: a sweep killed while writing leaves the previous ones)."""
    from .reports.report import markdown_table

    header, rows = trial_rows(study)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    runs.write_atomic(output / "trials.csv", buffer.getvalue())
    runs.write_atomic(output / "trials.md", markdown_table(header, shown_rows(rows)) + "\n")
    best = best_trial(study)
    best_recipe = Path(best.user_attrs["run_dir"]) / "recipe.yaml" if best is not None else None
    if best_recipe is not None and best_recipe.is_file():  # (another machine's trial may be out of reach)
        recipe = yaml.safe_load(best_recipe.read_text(encoding="utf-8"))
        recipe["output_dir"] = str((output / "best").resolve())
        note = f"# The best trial ({best.number}: {best.value:.6g}, {study.direction.name.lower()}d) of {output}.\n"
        runs.write_atomic(output / "best.yaml", note + yaml.safe_dump(recipe, sort_keys=False))


def best_trial(study):
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    complete = [t for t in complete if "run_dir" in t.user_attrs]
    if not complete:
        return None
    return (max if study.direction.name == "MAXIMIZE" else min)(complete, key=lambda t: t.value)


# ---------------------------------------------------------------------------------------------- report


def load_sweep_study(sweep_dir: Path):
    """The study a sweep directory describes (its sweep.json)."""
    import optuna

    description = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    storage = description["storage"]
    if storage == "study.db":
        storage = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    elif "***" in storage:
        raise UserError(f"{sweep_dir}: the sweep's storage {storage} needs its password, which llmtune never writes")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=description["study_name"], storage=storage), description


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """SWEEP_DIR/report.md: the objective, the trials table, the optimisation history and the parameter
    importances (PNG files drawn by Optuna's matplotlib plots), and the best trial's own report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    from .reports.report import write_report

    sweep_dir = Path(sweep_dir)
    study, description = load_sweep_study(sweep_dir)
    header, rows = trial_rows(study)
    counts = {state: sum(row[1] == state for row in rows) for state in ("complete", "pruned", "fail", "running")}
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"Recipe `{description['recipe']}`, space `{description['space']}`; objective: {description['direction']} "
        f"validation {description['metric']}; {len(rows)} trials ("
        + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        + ").",
        "",
    ]
    best = best_trial(study)
    if best is not None:
        run_dir = Path(best.user_attrs["run_dir"])
        link = os.path.relpath(run_dir / "report.md", sweep_dir)
        if runs.is_finished_run(run_dir):
            write_report(run_dir, "md")
        lines += [
            f"Best: trial {best.number}, {description['metric']} = {best.value:.4f} "
            f"([its report]({link}); the winning recipe: [best.yaml](best.yaml)).",
            "",
        ]
    for name, draw in (
        ("optimization_history", optuna_plots.plot_optimization_history),
        ("param_importances", optuna_plots.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(study)
            figure = getattr(axes, "figure", None) or plt.gcf()
            figure.savefig(sweep_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            lines += [f"![{name.replace('_', ' ')}]({name}.png)", ""]
        except (ValueError, RuntimeError) as exc:  # too few finished trials for this plot
            lines += [f"({name.replace('_', ' ')}: not drawn: {exc})", ""]
    from .reports.report import markdown_table

    lines += ["## Trials", "", markdown_table(header, shown_rows(rows)), ""]
    output = sweep_dir / "report.md"
    runs.write_atomic(output, "\n".join(lines))
    return output


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()
