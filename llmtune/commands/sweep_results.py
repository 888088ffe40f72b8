"""What a sweep directory shows: trials.csv / trials.md, best.yaml (the winning recipe) and report.md with
Optuna's plots and the best trial's own report."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import yaml

from ..common import runs
from ..common.errors import UserError


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
    from ..reports.report import markdown_table

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


def load_sweep_study(sweep_dir: Path):
    """The study a sweep directory describes (its sweep.json)."""
    import optuna

    description = json.loads((sweep_dir / runs.SWEEP_FILE).read_text(encoding="utf-8"))
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

    from ..reports.report import write_report

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
    from ..reports.report import markdown_table

    lines += ["## Trials", "", markdown_table(header, shown_rows(rows)), ""]
    output = sweep_dir / "report.md"
    runs.write_atomic(output, "\n".join(lines))
    return output


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / runs.SWEEP_FILE).is_file()
