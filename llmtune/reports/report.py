"""`llmtune report` and `llmtune compare`: a finished run's story as one HTML page or Markdown file,
and several runs' metrics side by side. Everything is read from the run directory's files; what depends on
the task (the per-example metric that ranks predictions, extra tables and plots) comes from its contract.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from .. import tasks
from ..common import runs
from ..common.errors import UserError
from ..recipe import load_recipe
from ..tasks.base import Task
from . import plots, trust

SAMPLE_ROWS = 10
# Run-level training figures worth showing, with their labels.
TRAINING_FIGURES = {
    "steps": "optimizer steps",
    "epochs": "epochs",
    "examples": "examples seen",
    "runtime_s": "training time (s)",
    "samples_per_s": "throughput (samples/s)",
    "peak_memory_mb": "peak memory, host (MiB)",
    "peak_gpu_memory_mb": "peak memory, GPU (MiB)",
}


def load_metrics(run_dir: Path) -> dict:
    """metrics.json of a finished run.

    Raises:
        UserError: not a directory, or not a finished run.
    """
    runs.require_finished_run(run_dir)
    return json.loads((run_dir / runs.METRICS_FILE).read_text(encoding="utf-8"))


def sample_predictions(
    rows: list[dict], task: type[Task] | Task, limit: int = SAMPLE_ROWS
) -> list[tuple[str, list[dict]]]:
    """Titled groups of prediction rows worth reading: the worst first by the task's per-example metric (ties:
    the most confident first, so confident mistakes lead), then the least confident predictions."""
    metric, higher = task.example_metric, task.example_metric_higher_is_better
    groups = []
    scored = [row for row in rows if metric in (row.get("metrics") or {})]
    if scored:
        worst = sorted(scored, key=lambda r: ((1 if higher else -1) * r["metrics"][metric], -(r.get("score") or 0.0)))
        direction = "lowest" if higher else "highest"
        groups.append((f"Worst {task.example_noun} first: {direction} {metric}, then most confident", worst[:limit]))
    confident = [row for row in rows if row.get("score") is not None]
    if confident:
        groups.append(("Least confident predictions", sorted(confident, key=lambda r: r["score"])[:limit]))
    return groups or [("Predictions", rows[:limit])]


def display_row(row: dict) -> dict:
    """A prediction row flattened for a table: inputs, reference, prediction, score, per-example metrics, extras."""
    flat = dict(row.get("inputs") or {})
    for key, value in row.items():
        if key == "metrics":
            flat.update(value)
        elif key not in ("index", "inputs"):
            flat[key] = value
    return flat


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text if len(text) <= 300 else text[:297] + "..."


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    flat = [display_row(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    return columns, [[_cell(row.get(column, "")) for column in columns] for row in flat]


def _metric_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-split metrics table (splits as rows); structured values go to the task's tables."""
    splits = [s for s in ("validation", "test") if s in metrics] + [
        s for s in metrics if s not in ("train", "validation", "test", *runs.AUDIT_ENTRIES)
    ]
    names = list(
        dict.fromkeys(k for s in splits for k, v in metrics[s].items() if runs.is_metric(k) and not isinstance(v, dict))
    )
    header = ["split", *names, "examples"]
    body = [
        [split, *(_cell(metrics[split].get(n, "")) for n in names), _cell(metrics[split].get("num_examples", ""))]
        for split in splits
    ]
    return header, body


def report_blocks(run_dir: Path, images: dict[str, str]) -> list[tuple]:
    """The report's content once, for both formats: ("h1"|"h2"|"h3"|"p"|"pre", text), ("table", header, rows),
    ("image", name, source), ("html", markup shown as it is). `images` maps plot names to where the page finds
    them."""
    metrics = load_metrics(run_dir)
    recipe = load_recipe(run_dir / runs.RECIPE_FILE)
    task = tasks.create(recipe.task)
    blocks: list[tuple] = [
        ("h1", f"Run report: {run_dir.resolve().name}"),
        ("p", f"Task {task.name}, model {recipe.model.name}, method {recipe.method.type}."),
        ("h2", "Metrics"),
        ("table", *_metric_table(metrics)),
    ]
    for split in ("validation", "test"):
        for title, header, rows in task.metric_tables(metrics.get(split, {})):
            blocks += [("h3", f"{title} ({split})"), ("table", header, [[_cell(c) for c in row] for row in rows])]
    figures = [(label, metrics.get("train", {}).get(key)) for key, label in TRAINING_FIGURES.items()]
    if any(value is not None for _, value in figures):
        rows = [[label, _cell(value)] for label, value in figures if value is not None]
        blocks += [("h2", "Training"), ("table", ["", "value"], rows)]
    images = dict(images)
    reliability = trust.take_reliability(images)
    if images:
        blocks += [("h2", "Plots"), *(("image", name, source) for name, source in images.items())]
    blocks += trust.trust_blocks(run_dir, metrics, reliability)
    predictions = plots.read_jsonl(run_dir / runs.PREDICTIONS_FILE)
    if predictions:
        blocks.append(("h2", f"Sample predictions ({plots.predictions_split(recipe)} split)"))
        for title, rows in sample_predictions(predictions, task):
            blocks += [("h3", title), ("table", *_table(rows)) if rows else ("p", "none")]
    return blocks + [("h2", "Recipe"), ("pre", (run_dir / runs.RECIPE_FILE).read_text(encoding="utf-8").rstrip())]


def render_html(run_dir: str | Path) -> str:
    """One self-contained HTML page: plots inlined as base64 PNG, no external files or scripts."""
    run_dir = Path(run_dir)
    load_metrics(run_dir)
    images = {
        name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in plots.render(run_dir).items()
    }
    esc = html.escape
    parts = []
    for kind, *content in report_blocks(run_dir, images):
        if kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in content[0])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in content[1])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "image":
            parts.append(f'<figure><img alt="{esc(content[0])}" src="{content[1]}"></figure>')
        elif kind == "html":
            parts.append(content[0])
        else:
            parts.append(f"<{kind}>{esc(content[0])}</{kind}>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
        "vertical-align:top}th{background:#f0f0f0}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>llmtune report: {esc(run_dir.name)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def render_markdown(run_dir: str | Path, output: Path) -> str:
    """The report as Markdown; plots are the run directory's PNG files (drawn again), linked relative to `output`."""
    run_dir = Path(run_dir)
    load_metrics(run_dir)
    relative = lambda path: Path(os.path.relpath(path.resolve(), output.resolve().parent)).as_posix()  # noqa: E731
    images = {path.stem: relative(path) for path in plots.save_plots(run_dir)}
    clean = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = []
    for kind, *content in report_blocks(run_dir, images):
        if kind == "table":
            header, rows = content
            lines += [
                "| " + " | ".join(map(clean, header)) + " |",
                "|" + "---|" * len(header),
                *("| " + " | ".join(map(clean, row)) + " |" for row in rows),
                "",
            ]
        elif kind == "image":
            lines += [f"![{content[0]}]({content[1]})", ""]
        elif kind == "pre":
            lines += ["```yaml", content[0], "```", ""]
        elif kind == "html":  # Markdown renders inline HTML
            lines += [content[0], ""]
        else:
            lines += [{"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[kind] + content[0], ""]
    return "\n".join(lines)


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
    if len(paths) < 2:
        raise UserError(f"compare needs two or more run directories, got {len(paths)}; for one run use llmtune report")
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
            for name, value in metrics[split].items()
            if not isinstance(value, dict)
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
