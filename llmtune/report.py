"""`llmtune report` and `llmtune compare`: a finished run's story as one HTML page or Markdown file,
and several runs' metrics side by side. Everything is read from the run directory's files.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from . import plots, runs
from .errors import UserError

SAMPLE_ROWS = 10
# Per-example scores a task may write into predictions.jsonl, and whether higher is better for showing "best".
GENERATION_SCORES = ("rougeL", "rouge1", "rouge2", "bleu", "sacrebleu")
QA_SCORES = ("f1", "exact_match")
# Run-level training figures worth showing, with their labels.
TRAINING_FIGURES = {
    "steps": "optimizer steps",
    "epochs": "epochs",
    "examples": "examples seen",
    "runtime_s": "training time (s)",
    "samples_per_s": "throughput (samples/s)",
    "peak_memory_mb": "peak memory (MiB)",
}


def load_metrics(run_dir: Path) -> dict:
    """metrics.json of a finished run.

    Raises:
        UserError: not a directory, or not a finished run.
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory; expected a run directory written by llmtune train")
    if not runs.is_finished_run(run_dir):
        raise UserError(
            f"{run_dir}: not a finished run (expected {runs.RECIPE_FILE} and {runs.METRICS_FILE}); did training stop early?"
        )
    return json.loads((run_dir / runs.METRICS_FILE).read_text(encoding="utf-8"))


def sample_predictions(rows: list[dict], limit: int = SAMPLE_ROWS) -> list[tuple[str, list[dict]]]:
    """Titled groups of predictions worth reading: the worst mistakes first.

    Classification: wrong predictions, most confident first, then the least confident predictions.
    QA (per-example f1 / exact_match): lowest score first. Generation (per-example ROUGE / BLEU): best and worst.
    """
    if not rows:
        return []
    first = rows[0]
    if "label" in first and "predicted" in first:
        wrong = sorted((r for r in rows if r["label"] != r["predicted"]), key=lambda r: -r.get("score", 0))
        groups = [
            (f"Worst mistakes: wrong and most confident first ({len(wrong)} of {len(rows)} wrong)", wrong[:limit])
        ]
        if "score" in first:
            groups.append(("Least confident predictions", sorted(rows, key=lambda r: r["score"])[:limit]))
        return groups
    for key in QA_SCORES:
        if key in first:
            return [(f"Worst answers: lowest {key} first", sorted(rows, key=lambda r: r[key])[:limit])]
    for key in GENERATION_SCORES:
        if key in first:
            ranked = sorted(rows, key=lambda r: r[key])
            return [(f"Best by {key}", ranked[::-1][:limit]), (f"Worst by {key}", ranked[:limit])]
    return [("Predictions", rows[:limit])]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text if len(text) <= 300 else text[:297] + "..."


def _columns(rows: list[dict]) -> list[str]:
    return [key for key in dict.fromkeys(k for row in rows for k in row) if key != "index"]


def _metric_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-split metrics table (splits as rows)."""
    splits = [s for s in ("validation", "test") if s in metrics] + [
        s for s in metrics if s not in ("train", "validation", "test")
    ]
    names = list(dict.fromkeys(k for s in splits for k in metrics[s] if k not in runs.NOT_METRICS))
    header = ["split", *names, "examples"]
    body = [
        [split, *(_cell(metrics[split].get(n, "")) for n in names), _cell(metrics[split].get("num_examples", ""))]
        for split in splits
    ]
    return header, body


def render_html(run_dir: str | Path) -> str:
    """One self-contained HTML page: plots inlined as base64 PNG, no external files or scripts."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    recipe_text = (run_dir / runs.RECIPE_FILE).read_text(encoding="utf-8")
    recipe = plots.read_recipe(run_dir)
    images = plots.render(run_dir)
    predictions = plots.read_jsonl(run_dir / runs.PREDICTIONS_FILE)
    esc = html.escape

    def table(header, body) -> str:
        head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    parts = [
        f"<h1>Run report: {esc(run_dir.resolve().name)}</h1>",
        f"<p>{esc(_summary(recipe))}</p>",
        "<h2>Metrics</h2>",
        table(*_metric_table(metrics)),
    ]
    figures = [(label, metrics.get("train", {}).get(key)) for key, label in TRAINING_FIGURES.items()]
    if any(value is not None for _, value in figures):
        parts += [
            "<h2>Training</h2>",
            table(["", "value"], [[label, _cell(value)] for label, value in figures if value is not None]),
        ]
    if images:
        parts.append("<h2>Plots</h2>")
        for name, png in images.items():
            parts.append(
                f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
            )
    if predictions:
        parts.append(f"<h2>Sample predictions ({esc(plots.predictions_split(recipe))} split)</h2>")
        for title, rows in sample_predictions(predictions):
            columns = _columns(rows)
            parts += [
                f"<h3>{esc(title)}</h3>",
                table(columns, [[_cell(r.get(c, "")) for c in columns] for r in rows]) if rows else "<p>none</p>",
            ]
    parts += ["<h2>Recipe</h2>", f"<pre>{esc(recipe_text)}</pre>"]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f0f0f0}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>llmtune report: {esc(run_dir.name)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def render_markdown(run_dir: str | Path, output: Path) -> str:
    """The report as Markdown; plots are the run directory's PNG files (drawn again), linked relative to `output`."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    recipe = plots.read_recipe(run_dir)
    predictions = plots.read_jsonl(run_dir / runs.PREDICTIONS_FILE)

    def table(header, body) -> list[str]:
        clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        return [
            "| " + " | ".join(map(clean, header)) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(map(clean, row)) + " |" for row in body),
            "",
        ]

    lines = [
        f"# Run report: {run_dir.resolve().name}",
        "",
        _summary(recipe),
        "",
        "## Metrics",
        "",
        *table(*_metric_table(metrics)),
    ]
    figures = [(label, metrics.get("train", {}).get(key)) for key, label in TRAINING_FIGURES.items()]
    if any(value is not None for _, value in figures):
        lines += [
            "## Training",
            "",
            *table(["", "value"], [[label, _cell(value)] for label, value in figures if value is not None]),
        ]
    images = plots.save_plots(run_dir)
    if images:
        lines += ["## Plots", ""]
        for path in images:
            lines += [
                f"![{path.stem}]({Path(os.path.relpath(path.resolve(), output.resolve().parent)).as_posix()})",
                "",
            ]
    if predictions:
        lines += [f"## Sample predictions ({plots.predictions_split(recipe)} split)", ""]
        for title, rows in sample_predictions(predictions):
            columns = _columns(rows)
            lines += [
                f"### {title}",
                "",
                *(table(columns, [[_cell(r.get(c, "")) for c in columns] for r in rows]) if rows else ["none", ""]),
            ]
    lines += ["## Recipe", "", "```yaml", (run_dir / runs.RECIPE_FILE).read_text(encoding="utf-8").rstrip(), "```", ""]
    return "\n".join(lines)


def _summary(recipe: dict) -> str:
    model = (recipe.get("model") or {}).get("name", "?")
    task = (recipe.get("task") or {}).get("type", "?")
    method = (recipe.get("method") or {}).get("type", "?")
    return f"Task {task}, model {model}, method {method}."


def write_report(run_dir: str | Path, fmt: str = "html", output: str | Path | None = None) -> Path:
    """Write the report (default: report.html / report.md inside the run directory); returns its path.

    Raises:
        UserError: unknown format, or not a finished run.
    """
    if fmt not in ("html", "md"):
        raise UserError(f"--format {fmt}: unknown format; expected html or md")
    run_dir = Path(run_dir)
    load_metrics(run_dir)
    output = Path(output) if output else run_dir / f"report.{fmt}"
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: the directory {output.parent} does not exist")
    text = render_html(run_dir) if fmt == "html" else render_markdown(run_dir, output)
    runs.write_atomic(output, text)
    return output


def compare(run_dirs: list[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Header (metric, then one column per run) and rows (`split/metric`) of several runs' metrics.

    Raises:
        UserError: a path that is not a finished run.
    """
    paths = [Path(p) for p in run_dirs]
    all_metrics = [load_metrics(p) for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):  # same leaf names: show the paths as given
        names = [str(p) for p in paths]
    keys = list(
        dict.fromkeys(
            f"{split}/{name}"
            for metrics in all_metrics
            for split in ("validation", "test", "train")
            if split in metrics
            for name in metrics[split]
        )
    )
    rows = []
    for key in keys:
        split, name = key.split("/", 1)
        rows.append([key, *(_cell(m.get(split, {}).get(name, "-")) for m in all_metrics)])
    return ["metric", *names], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """An aligned Markdown table: readable in a terminal and pasteable into notes."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
