"""`llmtune audit`: training rows most likely mislabeled, ranked with cleanlab from out-of-fold class probabilities.

Out-of-fold: the training rows are split into k stratified folds and k models are trained with the recipe's own
settings, each on the other k-1 folds, so every row is scored by a model that never saw its label. That costs k
trainings; `--reuse-run` instead scores the training rows with one finished run, which has learned (and partly
memorised) those very labels, so it is more confident in them than it should be and flags fewer rows.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import tasks
from ..common import runs
from ..common.errors import UserError
from ..data import reading as data
from ..data.schema import DataSource, DataSpec
from ..recipe import Recipe, load_recipe

ISSUES_FILE = "label_issues.csv"
FOLDS_DIR = "audit-folds"  # the k fold runs, under the CSV's directory while the audit runs
CSV_COLUMNS = ["row", "location", "given_label", "suggested_label", "score", "flagged", "text"]


@dataclass
class AuditResult:
    csv_path: Path
    rows: list[dict]  # every training row, most likely mislabeled first (CSV_COLUMNS)
    flagged: int  # rows cleanlab's find_label_issues flags
    method: str  # "5-fold out-of-fold" or "reused run (in-sample)"


def cleanlab_modules():
    """cleanlab's filter and rank modules, or one line on how to install them."""
    try:
        from cleanlab import filter as issue_filter
        from cleanlab import rank
    except ImportError:
        raise UserError("llmtune audit needs cleanlab: pip install 'llmtune[audit]'") from None
    return issue_filter, rank


def rank_label_issues(labels: list[int], probabilities, label_names: list[str], texts: list[str], where) -> list[dict]:
    """Every row with its label-quality score (cleanlab's self-confidence: the probability of the given label;
    low means likely mislabeled), the model's suggestion (its most probable label) and whether cleanlab's
    find_label_issues (prune by estimated noise rate) flags it, lowest score first. `where(row)` locates a row."""
    import numpy

    issue_filter, rank = cleanlab_modules()
    labels_array = numpy.asarray(labels)
    probabilities = numpy.asarray(probabilities, dtype=float)
    scores = rank.get_label_quality_scores(labels_array, probabilities)
    flagged = issue_filter.find_label_issues(labels_array, probabilities)
    rows = [
        {
            "row": index,
            "location": where(index),
            "given_label": label_names[labels[index]],
            "suggested_label": label_names[int(probabilities[index].argmax())],
            "score": round(float(scores[index]), 6),
            "flagged": bool(flagged[index]),
            "text": texts[index],
        }
        for index in range(len(labels))
    ]
    return sorted(rows, key=lambda row: (row["score"], row["row"]))


def audit(
    target: str | Path,
    folds: int = 5,
    reuse_run: bool = False,
    output: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    echo=None,
) -> AuditResult:
    """Rank the training rows of a run or recipe by how likely their label is wrong, and write them as a CSV.

    Args:
        target: a finished run directory or a recipe file (its train split is audited).
        folds: k of the out-of-fold probabilities (k models trained); ignored with reuse_run.
        reuse_run: score the rows with the finished run `target` itself (one evaluation, biased: see the module).
        output: the CSV; default label_issues.csv in the run directory, or beside the recipe's output_dir
            (OUTPUT_DIR-audit/) for a recipe, so that the directory stays free for training.

    Raises:
        UserError: a target that is neither, a task audit does not handle, bad fold count, missing cleanlab.
    """
    echo = echo or (lambda line: None)
    cleanlab_modules()  # before any training: a missing extra is found in a second, not after k runs
    if not reuse_run and not 2 <= folds <= 20:
        raise UserError(f"--folds {folds}: expected 2 to 20 folds")
    path = Path(target)
    recipe, run_dir = audited_recipe(path, reuse_run, overrides)
    if output is not None:
        csv_path = Path(output)
        runs.check_output_file(csv_path, "--output")
    else:
        csv_path = default_output(run_dir, recipe)
        runs.check_writable(csv_path.parent, "--output")
    task = tasks.create(recipe.task)
    spec = DataSpec(train=recipe.data.train, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
    train = data.load_splits(spec, task.file_readers)["train"]
    task.prepare({"train": train}, spec)
    labels = [task.label_id(value) for value in train[task.options.label_column]]
    if reuse_run:
        probabilities, method = in_sample_probabilities(run_dir, task, echo), "reused run (in-sample, under-flags)"
    else:
        scratch = csv_path.parent / FOLDS_DIR
        probabilities = out_of_fold_probabilities(recipe, task, train, labels, folds, scratch, echo)
        method = f"{folds}-fold out-of-fold"
    texts = [str(text) for text in train[task.options.text_column]]
    ranked = rank_label_issues(
        labels, probabilities, task.label_names, texts, lambda row: data.row_location(recipe.data.train, row)
    )
    write_csv(csv_path, ranked)
    flagged = sum(row["flagged"] for row in ranked)
    echo(f"audit ({method}): {flagged:,} of {len(ranked):,} training rows flagged; ranked rows in {csv_path}")
    return AuditResult(csv_path, ranked, flagged, method)


def audited_recipe(path: Path, reuse_run: bool, overrides) -> tuple[Recipe, Path | None]:
    """The recipe whose train split is audited, and the run directory when `path` is a run."""
    if path.is_dir() and (path / runs.RECIPE_FILE).is_file():
        runs.require_finished_run(path)
        recipe, run_dir = load_recipe(path / runs.RECIPE_FILE, overrides), path
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        if reuse_run:
            raise UserError(f"--reuse-run: {path} is a recipe; reusing needs a finished run directory")
        recipe, run_dir = load_recipe(path, overrides), None
    else:
        raise UserError(f"{path}: neither a finished run directory nor a recipe file (.yaml); expected one of them")
    # Single-label rows only: multi-label would pass cleanlab lists of labels (multi_label=True), not yet done.
    if not tasks.TASKS[recipe.task.type].audits_labels:
        raise UserError(f"{path}: llmtune audit ranks single-label classification rows, not {recipe.task.type} rows")
    if recipe.data.train is None:
        raise UserError(f"{path}: the recipe has no data.train to audit")
    return recipe, run_dir


def default_output(run_dir: Path | None, recipe: Recipe) -> Path:
    if run_dir is not None:
        return run_dir / ISSUES_FILE
    output_dir = Path(recipe.output_dir)
    return output_dir.with_name(output_dir.name + "-audit") / ISSUES_FILE


def in_sample_probabilities(run_dir: Path, task, echo) -> list[list[float]]:
    """The run's class probabilities on its own training rows."""
    from ..inference.evaluation import evaluate

    echo(f"scoring the training rows with {run_dir} (it has seen their labels: expect fewer rows flagged)")
    _, rows = evaluate(run_dir, split="train")
    return [[row["probabilities"][name] for name in task.label_names] for row in rows]


def out_of_fold_probabilities(recipe: Recipe, task, train, labels: list[int], folds: int, scratch: Path, echo):
    """Each row's class probabilities from the fold model that did not train on it (k runs under `scratch`,
    removed once their predictions are read)."""
    from sklearn.model_selection import StratifiedKFold

    from ..engine.training import train as run_training

    smallest = min(labels.count(label) for label in set(labels))
    if smallest < folds:
        raise UserError(
            f"--folds {folds}: a label has only {smallest} training rows; each fold needs one, so use --folds "
            f"{max(2, smallest)} or fewer"
        )
    scratch.mkdir(parents=True, exist_ok=True)
    probabilities: list[list[float] | None] = [None] * len(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=recipe.training.seed)
    for number, (kept, held_out) in enumerate(splitter.split(labels, labels), 1):
        echo(f"fold {number}/{folds}: training on {len(kept):,} rows, scoring {len(held_out):,}")
        fold_dir = scratch / f"fold-{number}"
        fold_recipe = fold_recipe_for(recipe, task, train, kept.tolist(), held_out.tolist(), scratch / f"{number}")
        result = run_training(fold_recipe, output_dir=fold_dir, overwrite=True)
        echo(f"fold {number}/{folds}: held-out accuracy {result.metrics['test'].get('accuracy', float('nan')):.4f}")
        for row in read_predictions(result.run_dir):
            probabilities[int(held_out[row["index"]])] = [row["probabilities"][name] for name in task.label_names]
        shutil.rmtree(fold_dir, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return probabilities


def fold_recipe_for(recipe: Recipe, task, train, kept: list[int], held_out: list[int], stem: Path) -> Recipe:
    """The recipe of one fold: its rows as JSON Lines files (labels written as names, columns already renamed),
    the held-out rows as its test split, no validation (nothing to select or calibrate on), same training."""
    label_column = task.options.label_column
    names = [task.label_names[task.label_id(value)] for value in train[label_column]]
    files = {}
    for split, indices in (("train", kept), ("test", held_out)):
        rows = train.select(indices).remove_columns([label_column]).to_list()
        for row, index in zip(rows, indices):
            row[label_column] = names[index]
        files[split] = stem.with_name(f"{stem.name}-{split}.jsonl")
        runs.write_jsonl(files[split], rows)
    data_spec = recipe.data.model_copy(
        update={
            "train": DataSource(path=str(files["train"])),
            "validation": None,
            "test": DataSource(path=str(files["test"])),
            "columns": {},
        }
    )
    options = task.resolved_options().model_copy(update={"calibrate": False, "temperature": None})
    evaluation = recipe.evaluation.model_copy(update={"metric_for_best": None, "early_stopping_patience": None})
    return recipe.model_copy(update={"data": data_spec, "task": options, "evaluation": evaluation})


def read_predictions(run_dir: Path) -> list[dict]:
    import json

    text = (run_dir / runs.PREDICTIONS_FILE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_atomic(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    """The rows of an audit CSV, as written (values as text)."""
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))
