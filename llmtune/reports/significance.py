"""Paired bootstrap significance for `llmtune compare`: is one run's metric really higher than another's on the
same test rows, or could resampling the rows turn the difference around?

Both runs' prediction rows are resampled with the SAME row indices (Koehn 2004; Berg-Kirkpatrick et al. 2012), so
what the two runs have in common (hard rows both get wrong) cancels and only their disagreements count. Each
resample recomputes the corpus metric from the task's per-row sufficient statistics (`Task.row_statistics`):
macro-F1, entity F1 and BLEU are not means of per-row scores, and a resample of rows is a vector of row counts,
so `counts @ statistics` gives every resample's sums in one matrix product.

Reported per metric: the difference (run minus the best run), its 95% percentile interval, and a two-sided p-value:
twice the share of resampled differences on the other side of zero (or at zero), with the +1 correction for a
finite number of resamples. The interval excludes zero exactly when p < 0.05 (up to resampling noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tasks
from ..common import runs
from ..common.errors import UserError
from ..recipe import load_recipe
from ..tasks.base import RowStatistics, Task
from . import plots

RESAMPLES = 10_000
SEED = 0
CELLS_PER_BLOCK = 4_000_000  # resamples x rows held at once (32 MB of counts)
LEVEL = 0.05


@dataclass
class Difference:
    metric: str
    difference: float  # run minus reference run, on all rows
    low: float  # 95% percentile interval of the difference
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < LEVEL


def resample_counts(rows: int, resamples: int, seed: int):
    """Blocks of (resamples, rows) counts: how often each row is drawn in each resample (rows drawn with
    replacement, as many as there are rows)."""
    generator = np.random.default_rng(seed)
    block = max(1, CELLS_PER_BLOCK // max(rows, 1))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = generator.integers(0, rows, size=(size, rows))
        offsets = (np.arange(size) * rows)[:, None]
        yield np.bincount((drawn + offsets).ravel(), minlength=size * rows).reshape(size, rows).astype(np.float64)


def paired_bootstrap(
    first: RowStatistics, second: RowStatistics, resamples: int = RESAMPLES, seed: int = SEED
) -> list[Difference]:
    """Differences first - second in each corpus metric, with intervals and p-values from `resamples` paired
    resamples of the rows (the same drawn rows for both runs). Deterministic for a seed."""
    observed = first.combine(first.values.sum(0)[None])[0] - second.combine(second.values.sum(0)[None])[0]
    blocks = [
        first.combine(counts @ first.values) - second.combine(counts @ second.values)
        for counts in resample_counts(len(first.values), resamples, seed)
    ]
    differences = np.concatenate(blocks)  # (resamples, metrics)
    low, high = np.percentile(differences, [2.5, 97.5], axis=0)
    results = []
    for column, name in enumerate(first.names):
        sample, delta = differences[:, column], observed[column]
        other_side = np.count_nonzero(sample <= 0) if delta > 0 else np.count_nonzero(sample >= 0)
        p_value = 1.0 if delta == 0 else min(1.0, 2 * (int(other_side) + 1) / (resamples + 1))
        results.append(Difference(name, float(delta), float(low[column]), float(high[column]), p_value))
    return results


def scored_rows(run_dir: Path) -> tuple[Task, str, list[dict]]:
    """The run's task, the split its predictions.jsonl holds, and its scored rows (with a reference) by index."""
    recipe = load_recipe(run_dir / runs.RECIPE_FILE)
    rows = [row for row in plots.read_jsonl(run_dir / runs.PREDICTIONS_FILE) if "metrics" in row]
    return tasks.create(recipe.task), plots.predictions_split(recipe), sorted(rows, key=lambda row: row["index"])


def same_rows(names: list[str], scored: list[tuple[Task, str, list[dict]]]) -> str | None:
    """Why the runs cannot be compared row by row (different tasks, splits, rows or references), or None."""
    (task, split, rows), first = scored[0], names[0]
    if not rows:
        return f"{first} has no scored prediction rows (predictions.jsonl rows with a reference)"
    key = lambda row: (row["index"], repr(row.get("inputs")), repr(row.get("reference")))  # noqa: E731
    for name, (other_task, other_split, other_rows) in zip(names[1:], scored[1:]):
        if other_task.name != task.name:
            return f"{name} is a {other_task.name} run and {first} a {task.name} run"
        if other_split != split:
            return f"{name}'s predictions are on the {other_split} split and {first}'s on the {split} split"
        if len(other_rows) != len(rows) or any(key(a) != key(b) for a, b in zip(rows, other_rows)):
            return (
                f"{name} and {first} were scored on different rows ({len(other_rows):,} and {len(rows):,} rows, "
                "or different inputs or references)"
            )
    return None


def significance(run_dirs: list[Path], names: list[str], resamples: int = RESAMPLES, seed: int = SEED):
    """(split, rows, best run's name, {other run's name: [Difference, ...]}): every run against the best by the
    task's main corpus metric (the first of `row_statistics`; higher is better).

    Raises:
        UserError: the runs were not scored on the same rows (of the same task and split).
    """
    scored = [scored_rows(Path(path)) for path in run_dirs]
    problem = same_rows(names, scored)
    if problem:
        raise UserError(f"compare: no paired significance test: {problem}; compare runs scored on the same test rows")
    statistics = [task.row_statistics(rows) for task, _, rows in scored]
    main = [s.metrics(s.values.sum(0))[s.names[0]] for s in statistics]
    best = int(np.argmax(main))
    results = {
        names[i]: paired_bootstrap(statistics[i], statistics[best], resamples, seed)
        for i in range(len(names))
        if i != best
    }
    return scored[0][1], len(scored[0][2]), names[best], results


def significance_lines(run_dirs: list[Path], names: list[str], resamples: int = RESAMPLES, seed: int = SEED):
    """compare's lines: the test's setting, then per run against the best one line per metric, or one line saying
    that no difference is significant."""
    split, rows, best, results = significance(run_dirs, names, resamples, seed)
    lines = [
        f"paired bootstrap on {rows:,} {split} rows ({resamples:,} resamples, seed {seed}): each run minus the best "
        f"run, {best}, with a 95% interval and a two-sided p-value"
    ]
    for name, differences in results.items():
        if not any(d.significant for d in differences):
            shown = ", ".join(f"{d.metric} {d.difference:+.4f} (p={d.p_value:.3f})" for d in differences)
            lines.append(f"{name} vs {best}: not significant at p<{LEVEL} ({shown})")
            continue
        for d in differences:
            verdict = "significant" if d.significant else "not significant"
            lines.append(
                f"{name} vs {best}: {d.metric} {d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                f"p={d.p_value:.4f} ({verdict})"
            )
    return lines
