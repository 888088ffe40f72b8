"""The `llmtune` command: a thin layer over the Python API."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common.errors import Interrupted, Notice, PeerLost, UserError
from .common.silence import silence_libraries_when_loaded
from .engine import launch

app = typer.Typer(
    help="Fine-tune BERT- and GPT-style checkpoints on NLP tasks from one YAML recipe.\n\n"
    "Typical use: `llmtune validate RECIPE`, `llmtune train RECIPE`, "
    "then `llmtune eval RUN_DIR` and `llmtune predict RUN_DIR`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", help="Override a recipe key, e.g. --set training.learning_rate=3e-5 (repeatable; values are YAML)."
    ),
]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, Notice):
        typer.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning
warnings.showwarning = _show_warning


def _fail(error: UserError) -> None:
    for line in str(error).splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def command(*names: str):
    """A command of the app: its user errors end it with one line and exit code 2, the libraries it loads stay
    silent for the rest of the command (never restored: the CLI is its own process), and it leaves the process group
    of a distributed launch destroyed, however it ends."""

    def register(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            silence_libraries_when_loaded()
            try:
                return function(*args, **kwargs)
            except UserError as error:
                _fail(error)
            finally:
                launch.end_process_group()

        return app.command(*names)(run)

    return register


def _echo(*parts) -> None:
    typer.echo(" ".join(str(part) for part in parts))


@command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe file (YAML).")],
    set_: SetOption = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Fail (exit 2) when splits share more than data.leakage_threshold (data.leakage: refuse)."
        ),
    ] = False,
) -> None:
    """Check a recipe, its data files, columns, labels, model config and tokenizer without loading weights.

    It runs every check `llmtune train` runs before training, so a recipe that validates also starts training,
    and audits the splits for leakage: rows of validation or test that also appear in an earlier split.
    """
    from .recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if strict:
        loaded.data = loaded.data.model_copy(update={"leakage": "refuse"})
    from .engine.preparation import prepare  # torch loads only for a recipe that parses

    prepared = prepare(loaded)
    checkpoint, decoder = prepared.checkpoint, prepared.decoder
    _echo(f"{recipe}: ok")
    _echo(
        f"  model: {checkpoint.name} ({checkpoint.origin})"
        + (f", decoder: {decoder.name} ({decoder.origin})" if decoder else "")
    )
    settled = {
        key: value for key, value in prepared.recipe.task.model_dump().items() if getattr(loaded.task, key) != value
    }  # what the data decided, e.g. label names
    _echo(f"  task: {prepared.task.name}" + "".join(f", {key}: {_shown(value)}" for key, value in settled.items()))
    for split, dataset in prepared.splits.items():
        _echo(f"  data.{split}: {len(dataset):,} examples")
    for line in leakage_lines(prepared.leakage):
        _echo(line)
    _echo(f"  method: {loaded.method.type}; output: {loaded.output_dir}")


@command()
def estimate(
    recipe: Annotated[Path, typer.Argument(help="The recipe file (YAML).")],
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON (bytes).")] = False,
) -> None:
    """Predict peak training memory (weights, gradients, optimizer, activations, logits) and a rough step time,
    without loading weights.

    It runs validate's checks first, then builds the model from its config on the meta device.
    """
    from .recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    from .engine.estimate import estimate as run_estimate
    from .engine.estimate import table
    from .engine.preparation import prepare  # torch loads only for a recipe that parses

    result = run_estimate(prepare(loaded))
    if as_json:
        _echo(json.dumps(result.as_dict(), indent=2))
        return
    for line in table(result):
        _echo(line)


def leakage_lines(audits: dict) -> list[str]:
    """validate's lines for the leakage audit: counts per pair of splits, then a few examples of each kind."""
    lines = []
    for name, pair in audits.items():
        lines.append(
            f"  leakage {name}: {len(pair.exact_rows)} exact, {len(pair.near_rows)} near duplicates of "
            f"{pair.compared[1]:,} {pair.later} rows in {pair.compared[0]:,} {pair.earlier} rows"
        )
        for match in pair.examples:
            similarity = "" if match.kind == "exact" else f" (Jaccard {match.similarity:.2f})"
            lines.append(
                f"    {match.kind}{similarity}, {match.group}: {pair.later} row {match.later_row + 1} "
                f"{match.later_text!r} ~ {pair.earlier} row {match.earlier_row + 1} {match.earlier_text!r}"
            )
    return lines


def _shown(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


@command()
def train(
    recipe: Annotated[Path, typer.Argument(help="The recipe file (YAML).")],
    set_: SetOption = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Run directory (overrides output_dir).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the training run (written by llmtune train) in the output directory; never an export, a "
            "merged model, a sweep or other files."
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in the output directory from its newest complete checkpoint."),
    ] = False,
    resume_from: Annotated[
        Optional[Path],
        typer.Option(
            "--resume-from", help="Continue from this run directory or checkpoint directory (implies --resume)."
        ),
    ] = None,
) -> None:
    """Fine-tune as the recipe says, evaluate on validation and test, and write the run directory.

    The run directory holds the resolved recipe, the model or adapter (loadable with plain
    transformers / peft), the tokenizer, metrics.json, predictions.jsonl and train_log.jsonl.
    """
    from .recipe import load_recipe

    if (resume or resume_from) and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one of them")
    try:
        loaded = load_recipe(recipe, set_ or [])
        from .engine.training import train as run_training  # torch loads only for a recipe that parses

        run_training(loaded, output_dir=output, overwrite=overwrite, echo=_echo, resume=resume_from or resume)
    except PeerLost as lost:
        typer.echo(f"error: {lost}", err=True)
        raise typer.Exit(1) from None
    except Interrupted as stopped:
        command = [
            "llmtune",
            "train",
            str(recipe),
            *(f"--set={item}" for item in set_ or []),
            "--resume-from",
            str(stopped.checkpoint.parent.parent),
        ]
        typer.echo(f"{stopped}\nresume with: {shlex.join(command)}", err=True)
        raise typer.Exit(stopped.exit_code) from None


@command("eval")
def eval_(
    target: Annotated[
        str,
        typer.Argument(
            help="Run directory, checkpoint directory / hub id, or a recipe file (its model before fine-tuning)."
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Split of the run's recipe to evaluate: train, validation or test.")
    ] = "test",
    data_file: Annotated[
        Optional[Path], typer.Option("--data", help="Evaluate on this file instead (same columns as the recipe).")
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Write metrics and predictions as JSON/JSONL here (FILE.json; predictions next to it).",
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Evaluate a run or checkpoint on a split: the task's metrics (accuracy / F1 / ROUGE / BLEU ...) and cross-entropy.

    Given a recipe file, it scores the model the recipe would start from (zero-shot baseline) on the recipe's split.
    """
    from .common.runs import check_output_file, write_json, write_jsonl
    from .inference.evaluation import evaluate, format_metrics

    if output is not None:  # before the work: an evaluation can take an hour
        check_output_file(output, "--output")
        check_output_file(output.with_suffix(".predictions.jsonl"), "--output")
    metrics, predictions = evaluate(
        target,
        split=split,
        data_file=str(data_file) if data_file else None,
        overrides=set_ or [],
        echo=lambda line: typer.echo(line, err=True),
    )  # stdout keeps the results only
    _echo(f"{'data' if data_file else split}: {format_metrics(metrics)}")
    if output is not None:
        write_json(output, metrics)
        write_jsonl(output.with_suffix(".predictions.jsonl"), predictions)
        _echo(f"metrics written to {output}")


def predict(
    target: Annotated[str, typer.Argument(help="Run directory, or a checkpoint directory / hub id.")],
    input_file: Annotated[
        Optional[Path],
        typer.Option(
            "--input", help="File of rows (csv, tsv, json, jsonl, parquet) with the recipe's input column(s)."
        ),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write predictions as JSONL here instead of printing them.")
    ] = None,
    set_: SetOption = None,
    **fields: Optional[list[str]],
) -> None:
    """Predict with a fine-tuned run: labels and class probabilities, answers to questions, summaries, translations...

    Each input option is repeatable: the N-th prediction takes the N-th value of every option given.
    """
    from .common.runs import check_output_file, write_jsonl
    from .data.reading import read_file
    from .inference.prediction import predict as run_predict
    from .inference.saved import load_run
    from .tasks import file_readers

    given = {name: values for name, values in fields.items() if values}
    if len({len(values) for values in given.values()}) > 1:
        raise UserError(f"{' and '.join(_flag(name) for name in given)} must be given the same number of times")
    if not given and input_file is None:
        options = ", ".join(f"{_flag(name)} ..." for name in fields)
        raise UserError(f"give the inputs to predict for: {options} (repeatable), or --input FILE")
    if output is not None:
        check_output_file(output, "--output")
    rows: list = [dict(zip(given, values)) for values in zip(*given.values())]
    if input_file is not None:
        rows += read_file(str(input_file), f"--input {input_file}", file_readers()).to_list()
    loaded = load_run(target, set_ or [])
    accepted = loaded.task.input_columns()
    unknown = [name for name in given if name not in accepted]
    if unknown:
        raise UserError(
            f"{_flag(unknown[0])}: not an input of {loaded.task.name} runs; they take "
            + " and ".join(_flag(name) for name in accepted)
        )
    predictions = run_predict(loaded, rows)
    if output is not None:
        write_jsonl(output, predictions)
        _echo(f"{len(predictions)} predictions written to {output}")
    else:
        for row in predictions:
            _echo(json.dumps(row, ensure_ascii=False))


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _with_input_fields(command):
    """The predict command with one option per input field the registered tasks declare (--text, --question, ...)."""
    from .tasks import predict_fields

    signature = inspect.signature(command, eval_str=True)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for name, help_text in predict_fields().items():
        option = typer.Option(_flag(name), help=help_text)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[list[str]], option]
            )
        )
    command.__signature__ = signature.replace(parameters=parameters)
    return command


command()(_with_input_fields(predict))


@command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Target repository, ORG/NAME (created if missing).")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    revision: Annotated[
        Optional[str], typer.Option(help="Branch to push to (created from main if missing); default: main.")
    ] = None,
    merged: Annotated[
        bool,
        typer.Option(help="Push the adapter merged into its base model (a standalone model) instead of the adapter."),
    ] = False,
    commit_message: Annotated[Optional[str], typer.Option(help="Commit message.")] = None,
    include: Annotated[
        Optional[list[str]],
        typer.Option(help="Also upload run-directory files matching this glob, e.g. train_log.jsonl (repeatable)."),
    ] = None,
    license: Annotated[Optional[str], typer.Option(help="License id for the model card, e.g. apache-2.0.")] = None,
) -> None:
    """Upload a run to the Hugging Face Hub (or HF_ENDPOINT) with a generated model card.

    Uploads only the run's artifacts: the adapter (LoRA runs, a few MB) or the model, the tokenizer,
    recipe.yaml and metrics.json, plus README.md. Authenticates with HF_TOKEN or `hf auth login`.
    """
    from .deploy.hub import push as run_push

    run_push(
        run_dir,
        repo_id,
        private=private,
        revision=revision,
        merged=merged,
        commit_message=commit_message,
        include=include or [],
        license=license,
        echo=_echo,
    )


@command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A finished LoRA or IA3 run directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the merged model.")],
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the merged model (written by llmtune merge) at --output; never a training run, an export, "
            "a sweep or other files."
        ),
    ] = False,
) -> None:
    """Merge a run's adapter into its base weights: a standalone transformers model (safetensors) with tokenizer."""
    from .deploy.merge import merge as run_merge

    run_merge(run_dir, output, overwrite=overwrite)
    _echo(f"merged model saved to {output}")


@command()
def export(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished run that classifies texts or tokens, or answers questions.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the exported model.")],
    format_: Annotated[str, typer.Option("--format", help="The export format: onnx.")] = "onnx",
    quantize: Annotated[
        Optional[str], typer.Option(help="int8: also write model_quantized.onnx, int8 weights (dynamic quantization).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the ONNX export (written by llmtune export) at --output; never a training run, a merged "
            "model, a sweep or other files."
        ),
    ] = False,
) -> None:
    """Export a run to ONNX for ONNX Runtime (an adapter is merged first); eval, predict and serve load the export."""
    if format_ != "onnx":
        raise UserError(f"--format {format_}: unknown; expected onnx")
    from .deploy.export import export as run_export

    written = run_export(run_dir, output, quantize=quantize, overwrite=overwrite)
    _echo(f"exported to {written}" + (" (int8: model_quantized.onnx)" if quantize else ""))


@command()
def serve(
    target: Annotated[str, typer.Argument(help="A finished run, an export of one, or a hub id of a pushed run.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most inputs answered as one batch.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long the first input of a batch waits for others (concurrent requests).")
    ] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Most inputs waiting; beyond it requests get 503.")] = 512,
    max_batch_tokens: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="Most padded tokens per forward pass (batches are cut by length); default 512 on CPU, else none"
        ),
    ] = None,
    max_inputs: Annotated[
        int,
        typer.Option(min=1, help="Most inputs (or prompts) in one request; beyond it the request gets 413."),
    ] = 64,
    max_body_bytes: Annotated[
        int,
        typer.Option(min=1, help="Largest request body in bytes (default 1 MiB); beyond it the request gets 413."),
    ] = 1 << 20,
    backend: Annotated[
        str,
        typer.Option(
            help="torch, or onnx for a directory written by llmtune export; default: the one the directory holds."
        ),
    ] = "auto",
    api_key_env: Annotated[
        Optional[str], typer.Option(help="Require Authorization: Bearer KEY, KEY read from this environment variable.")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Serve a run over HTTP: /v1/predict, and OpenAI-compatible /v1/completions and /v1/chat/completions for causal
    LMs; requests are batched; /docs shows the API.

    Requests are UTF-8 JSON (Content-Type: application/json) of at most 1 MiB with at most 64 inputs by default
    (--max-body-bytes, --max-inputs).

    Every error is one JSON object, {"error": {"message": ...}}, with a 4xx or 5xx status."""
    from .deploy.serve import Settings, api_key_from, load_for_serving
    from .deploy.serve import serve as run_server

    key = api_key_from(api_key_env)
    loaded, backend = load_for_serving(target, backend, set_ or [])
    settings = Settings(
        max_batch_size,
        max_wait_ms,
        max_queue,
        max_batch_tokens=max_batch_tokens,
        max_items=max_inputs,
        max_body_bytes=max_body_bytes,
        api_key=key,
        backend=backend,
    )
    run_server(loaded, host, port, settings, echo=lambda line: typer.echo(line, err=True))


@command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="The recipe file (YAML) whose keys the sweep varies.")],
    space: Annotated[
        Path, typer.Option("--space", help="The search space (YAML): objective, pruner, seed, parameters.")
    ],
    set_: SetOption = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Finished trials the study should hold.")] = 20,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", min=1, help="Stop starting trials after this many seconds.")
    ] = None,
    storage: Annotated[
        Optional[str],
        typer.Option(
            "--storage",
            help="An Optuna storage URL shared by workers on several machines (e.g. postgresql://...); "
            "default: SQLite in the sweep directory.",
        ),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Sweep directory; default: runs/sweep-<recipe name>.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in the output directory.")] = False,
) -> None:
    """Search hyper-parameters with Optuna: TPE-sampled trials, each an ordinary run, pruned on validation.

    The sweep directory holds a run directory per trial, trials.csv / trials.md, and best.yaml (the winning
    recipe, ready for `llmtune train`); `llmtune report SWEEP_DIR` draws the search.
    """
    from .commands.sweep_storage import redacted

    output = output or Path("runs") / f"sweep-{recipe.stem}"
    try:
        from .commands.sweep import run_sweep

        study = run_sweep(recipe, space, output, trials, timeout, storage, resume, set_ or [], echo=_echo)
    except Interrupted as stopped:
        typer.echo(f"{stopped}\nthe sweep stopped; continue it with the same command and --resume", err=True)
        raise typer.Exit(stopped.exit_code) from None
    _echo(f"sweep saved to {output} ({len(study.trials)} trials in {redacted(storage) if storage else 'study.db'})")
    if (output / "best.yaml").exists():
        _echo(f"best recipe: {output / 'best.yaml'} (llmtune train {output / 'best.yaml'})")


@command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", help="html (one self-contained page) or md (Markdown, plots as PNG files of the run)."
        ),
    ] = "html",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Report file; default: report.html / report.md in the run directory."),
    ] = None,
) -> None:
    """Write a run report: recipe, metrics per split, plots, throughput and memory, sample predictions (worst first).

    For a sweep directory: the trials, the optimisation history and parameter importances, and the best trial's
    report (Markdown with PNG plots, in the sweep directory).
    """
    from .commands.sweep_results import is_sweep_dir, write_sweep_report
    from .reports.report import write_report

    written = write_sweep_report(run_dir) if is_sweep_dir(run_dir) else write_report(run_dir, format_, output)
    _echo(f"report written to {written}")


@command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more finished run directories.")],
    significance: Annotated[
        Optional[bool],
        typer.Option(
            "--significance/--no-significance",
            help="Paired bootstrap of each run against the best one on their prediction rows. Default: when the "
            "runs were scored on the same rows; --significance refuses runs that were not.",
        ),
    ] = None,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
) -> None:
    """Put several runs' metrics side by side (a Markdown table), then say which differences are significant:
    a paired bootstrap over the test rows both runs were scored on, with 95% intervals and p-values."""
    from .reports.report import compare as compare_runs
    from .reports.report import markdown_table
    from .reports.significance import significance_lines

    header, rows = compare_runs(run_dirs)
    lines = []
    if significance is not False:
        try:
            lines = significance_lines(run_dirs, header[1:], resamples, seed)
        except UserError as error:
            if significance:
                raise
            typer.echo(f"warning: {error}", err=True)  # the table still stands; only the test needs same rows
    _echo(markdown_table(header, rows))
    for line in lines:
        _echo(line)


@command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A finished classification run with a validation split.")],
) -> None:
    """Fit temperature scaling on the run's validation split and keep it in the run's recipe (eval, predict, serve
    and export then apply it); prints the expected calibration error (ECE) before and after on validation and test.
    """
    from .commands.calibrate import calibrate_run

    result = calibrate_run(run_dir, echo=lambda line: typer.echo(line, err=True))
    _echo(f"temperature: {result.temperature:.4f} (was {result.previous:.4f}), written to {run_dir / 'recipe.yaml'}")
    for split, (before, after) in result.ece.items():
        accuracy = result.accuracy[split]  # None unless evaluation.metrics has it
        shown = f"  accuracy {accuracy[0]:.4f} -> {accuracy[1]:.4f}" if None not in accuracy else ""
        _echo(f"{split}: ECE {before:.4f} -> {after:.4f}{shown}")


@command()
def audit(
    target: Annotated[str, typer.Argument(help="A finished run directory or a recipe file: its train split.")],
    folds: Annotated[
        int, typer.Option(help="Out-of-fold probabilities from this many models, each trained without one fold.")
    ] = 5,
    reuse_run: Annotated[
        bool,
        typer.Option(
            "--reuse-run",
            help="Cheaper: score the rows with the finished run itself (one evaluation). It has seen these labels, so "
            "it flags fewer rows than out-of-fold models.",
        ),
    ] = False,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="The CSV; default: label_issues.csv in the run (OUTPUT_DIR-audit/ for a recipe)."
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Rank the training rows most likely mislabeled (cleanlab on out-of-fold class probabilities) into a CSV:
    row, given label, suggested label, score (lower: more likely wrong), flagged. `llmtune report` shows it."""
    from .commands.audit import audit as run_audit

    result = run_audit(
        target,
        folds=folds,
        reuse_run=reuse_run,
        output=output,
        overrides=set_ or [],
        echo=lambda line: typer.echo(line, err=True),
    )
    for row in result.rows[:5]:
        _echo(f"{row['location']}: {row['given_label']} -> {row['suggested_label']} (score {row['score']:.4f})")
    _echo(f"{result.flagged} rows flagged ({result.method}); all rows ranked in {result.csv_path}")


@command()
def recipes() -> None:
    """List the built-in recipes, one line each."""
    from .recipe.starter import builtin_recipes

    found = builtin_recipes()
    width = max((len(str(path.relative_to(path.parent.parent))) for path, _ in found), default=0)
    for path, summary in found:
        _echo(f"{str(path.relative_to(path.parent.parent)):<{width}}  {summary}")


@command()
def init(
    task: Annotated[str, typer.Argument(help="The task, e.g. classification.")],
    model: Annotated[
        str, typer.Option(help="Hub id or local checkpoint directory to start from.")
    ] = "sentence-transformers/all-MiniLM-L6-v2",
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Write the recipe here instead of printing it (refuses to replace a file)."
        ),
    ] = None,
) -> None:
    """Write a starter recipe with every key, its default and what it does."""
    from .common.runs import write_atomic
    from .recipe.starter import starter_recipe

    if output is not None and output.exists():
        raise UserError(f"--output {output}: already exists; choose another file name")
    text = starter_recipe(task, model, output_dir=f"runs/{output.stem}" if output else None)
    if output is not None and not output.parent.is_dir():
        raise UserError(f"--output {output}: the directory {output.parent} does not exist")
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomic(output, text)
        _echo(f"recipe written to {output}; check it with: llmtune validate {output}")


@command()
def ui(
    workspace: Annotated[Path, typer.Option(help="Folder of recipes, data and runs the UI works in.")] = Path("."),
    host: Annotated[str, typer.Option(help="Address to listen on; any but 127.0.0.1 requires --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    auth: Annotated[
        Optional[str], typer.Option(help="Password the page asks for (or LLMTUNE_UI_AUTH); required off 127.0.0.1.")
    ] = None,
) -> None:
    """A web UI: write a recipe in a form, start and follow runs, compare them, try predictions, push or export."""
    from .ui.server import serve_ui

    serve_ui(workspace, host, port, auth, echo=lambda line: typer.echo(line, err=True))


def main() -> None:
    # bitsandbytes, when installed, is imported with accelerate and peft (before any command silences libraries) and
    # warns on import that an optional CPU kernel package is missing: nothing to do with the command.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    sys.exit(main())
