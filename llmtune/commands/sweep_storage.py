"""Where a sweep's Optuna study lives: SQLite in the sweep directory, or a storage URL shared by workers on
several machines; a study continued or joined, the trials of a dead worker run again, and a URL's password
never shown."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from ..common.errors import UserError
from .sweep_space import Space

STUDY_NAME = "llmtune-sweep"


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
