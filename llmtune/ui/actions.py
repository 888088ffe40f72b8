"""What the UI's buttons do, without the page: starting recipes, predictions, comparisons, reports, pushing and
exporting. Everything reads and writes inside the workspace; every user error comes back as validate's one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from ..common import runs
from ..common.errors import UserError
from ..recipe.starter import RECIPES_DIR, builtin_recipes
from . import form, jobs

MAX_UPLOAD_BYTES = 1_000_000  # a recipe is a few kB; anything this large is not one
_model_lock = threading.Lock()
_models: dict[tuple[str, int], object] = {}  # (run path, metrics.json mtime) -> LoadedRun
_token_lock = threading.Lock()


def starting_points(workspace: Path) -> list[tuple[str, str]]:
    """(label, value) of the recipes a new run may start from: the shipped ones and the workspace's YAML files."""
    found = [(f"shipped: {path.name}", f"shipped:{path.name}") for path, _ in _shipped()]
    for path in sorted([*workspace.glob("*.y*ml"), *workspace.glob("recipes/*.y*ml")]):
        relative = path.relative_to(workspace).as_posix()
        found.append((f"workspace: {relative}", f"workspace:{relative}"))
    return found


def _shipped() -> list[tuple[Path, str]]:
    try:
        return builtin_recipes()
    except UserError:  # a non-editable install has no recipes folder: only workspace recipes then
        return []


def starting_recipe(workspace: Path, choice: str) -> dict:
    """The recipe mapping of a starting point. A shipped recipe's data files (relative to the shipped recipes
    folder) are copied into the workspace at the same relative paths, so the form's paths stay in the workspace.

    Raises:
        UserError: an unknown choice or an unreadable file.
    """
    kind, _, name = (choice or "").partition(":")
    if kind == "shipped":
        path = next((p for p, _ in _shipped() if p.name == name), None)
        if path is None:
            raise UserError(f"{name!r}: not a shipped recipe")
        raw = form.read_yaml(path.read_text(encoding="utf-8"), path.name)
        _copy_shipped_data(workspace, raw)
        return raw
    if kind == "workspace":
        path = jobs.inside(workspace, name)
        return form.read_yaml(_read_limited(path), name)
    raise UserError("pick a recipe to start from")


def _copy_shipped_data(workspace: Path, raw: dict) -> None:
    for key, value in form.path_values(raw):
        if not key.startswith("data.") or not isinstance(value, str) or form._outside(value):
            continue
        source, target = (RECIPES_DIR / value).resolve(), workspace / value
        if source.is_file() and source.is_relative_to(RECIPES_DIR.resolve()) and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _read_limited(path: Path) -> str:
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UserError(f"{path.name}: {path.stat().st_size:,} bytes; a recipe is at most {MAX_UPLOAD_BYTES:,}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: not a text file") from None


def uploaded_recipe(path: str) -> dict:
    """The mapping of an uploaded recipe file (size-limited).

    Raises:
        UserError: too large, not text, not YAML or not a mapping.
    """
    upload = Path(path)
    return form.read_yaml(_read_limited(upload), upload.name)


def start(workspace: Path, raw: dict, problems: list[str]) -> str:
    """Start training the form's recipe; returns the run's name.

    Raises:
        UserError: the recipe has problems, or its output directory is taken or outside the workspace.
    """
    if problems:
        raise UserError("\n".join(problems))
    name = str(raw.get("output_dir", "")).strip().rstrip("/")
    run_dir = jobs.inside(workspace, name)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{form.SOURCE}: output_dir: {name} already holds files; choose another output_dir")
    name = run_dir.relative_to(workspace.resolve()).as_posix()
    jobs.launch(workspace, name, form.dump(form.for_run(raw, workspace)))
    return name


def _prepared(workspace: Path, raw: dict, problems: list[str]):
    """The form's recipe through `llmtune validate`'s checks beyond the schema (files, columns, labels, tokenizer)."""
    if problems:
        raise UserError("\n".join(problems))
    from ..engine.preparation import prepare
    from ..recipe import validate

    return prepare(validate(form.for_run(raw, workspace), source=form.SOURCE))


def estimate_memory(workspace: Path, raw: dict, problems: list[str]) -> str:
    """`llmtune estimate` of the form's recipe: peak training memory by component and a rough step time, from the
    model's config alone (no weights load)."""
    from ..engine.estimate import estimate, table

    return "\n".join(table(estimate(_prepared(workspace, raw, problems))))


def check_data(workspace: Path, raw: dict, problems: list[str]) -> str:
    """`llmtune validate`'s checks beyond the schema (files, columns, labels, tokenizer), in this process."""
    prepared = _prepared(workspace, raw, problems)
    sizes = ", ".join(f"data.{split}: {len(rows):,} examples" for split, rows in prepared.splits.items())
    return f"{form.SOURCE}: ok; model: {prepared.checkpoint.name}; task: {prepared.task.name}; {sizes}"


def finished_runs(workspace: Path) -> list[str]:
    return [name for name in jobs.run_names(workspace) if runs.is_finished_run(workspace / name)]


def finished_run(workspace: Path, name: str | None) -> Path:
    """A finished run of the workspace by name.

    Raises:
        UserError: none picked, outside the workspace, or not finished.
    """
    if not name:
        raise UserError("pick a finished run first")
    run_dir = jobs.inside(workspace, name)
    runs.require_finished_run(run_dir)
    return run_dir


def loaded_run(run_dir: Path):
    """The run's model, loaded once through `inference.load_run` and reused until the run changes."""
    from ..inference.saved import load_run

    key = (str(run_dir), (run_dir / runs.METRICS_FILE).stat().st_mtime_ns)
    with _model_lock:
        if key not in _models:
            for old in [k for k in _models if k[0] == key[0]]:
                del _models[old]
            _models[key] = load_run(run_dir)
        return _models[key]


def predict_fields(workspace: Path, name: str) -> dict[str, str]:
    """The inputs a finished run's task predicts from (its recipe's task type; no model loads)."""
    from .. import tasks

    run_dir = finished_run(workspace, name)
    task_type = jobs.recipe_summary(workspace, name, run_dir)[0]
    return tasks.TASKS[task_type].predict_fields if task_type in tasks.TASKS else {}


def predict(workspace: Path, name: str, fields: dict[str, str]) -> dict:
    """The task's prediction row for one input (`llmtune predict`'s code and output)."""
    from ..inference.prediction import predict as run_predict

    loaded = loaded_run(finished_run(workspace, name))
    given = {key: value for key, value in fields.items() if key in loaded.task.predict_fields and value}
    if not given:
        raise UserError(f"type an input: {', '.join(loaded.task.predict_fields)}")
    return run_predict(loaded, [given])[0]


def highlights(row: dict) -> list[tuple[str, str | None]]:
    """The input text with the row's character spans marked (a QA answer's `span`, the entities a NER row
    predicts), for any task whose rows carry such spans; empty when the row has none."""
    marks = []
    if isinstance(row.get("span"), dict) and isinstance(row.get("predicted"), str):
        marks.append((row["span"].get("start"), row["span"].get("end"), "answer", row["predicted"]))
    if isinstance(row.get("predicted"), list):
        for item in row["predicted"]:
            if isinstance(item, dict) and {"start", "end", "text"} <= set(item):
                marks.append((item["start"], item["end"], str(item.get("type", "span")), item["text"]))
    for text in (value for value in (row.get("inputs") or {}).values() if isinstance(value, str)):
        if marks and all(isinstance(s, int) and text[s:e] == found for s, e, _, found in marks):
            pieces, position = [], 0
            for start, end, label, _ in sorted(marks):
                pieces += [(text[position:start], None), (text[start:end], label)]
                position = end
            return [piece for piece in [*pieces, (text[position:], None)] if piece[0]]
    return []


def compare(workspace: Path, names: list[str]):
    """`llmtune compare`'s table of the picked runs, and their training-loss curves."""
    from ..reports.report import compare as compare_runs

    paths = [finished_run(workspace, name) for name in names or []]
    header, rows = compare_runs(paths)
    curves = [
        {"step": e["step"], "loss": e["loss"], "run": name}
        for name, path in zip(names, paths)
        for e in jobs.log_entries(path)
        if "loss" in e
    ]
    return header, rows, curves


def report_html(workspace: Path, name: str) -> str:
    from ..reports.report import render_html

    return render_html(finished_run(workspace, name))


def card(workspace: Path, name: str, repo_id: str, license: str | None) -> str:
    """The model card `llmtune push` would upload."""
    import json

    from ..deploy.hub import check_repo_id, model_card
    from ..recipe import load_recipe

    run_dir = finished_run(workspace, name)
    check_repo_id(repo_id or "")
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text(encoding="utf-8"))
    adapter = (run_dir / runs.ADAPTER_CONFIG).is_file()
    return model_card(load_recipe(run_dir / runs.RECIPE_FILE), metrics, repo_id, adapter, license=license or None)


@contextlib.contextmanager
def _token(token: str | None):
    """HF_TOKEN set to a typed token for one push (else the environment's), restored after."""
    if not token:
        yield
        return
    with _token_lock:
        before = os.environ.get("HF_TOKEN")
        os.environ["HF_TOKEN"] = token
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("HF_TOKEN", None)
            else:
                os.environ["HF_TOKEN"] = before


def push(workspace: Path, name: str, repo_id: str, private: bool, license: str | None, token: str | None) -> str:
    from ..deploy.hub import push as run_push

    run_dir = finished_run(workspace, name)
    lines: list[str] = []
    try:
        with _token(token):
            url = run_push(run_dir, repo_id, private=private, license=license or None, echo=lines.append)
    except UserError as error:
        raise UserError(scrubbed(str(error), token)) from None
    return scrubbed("\n".join([*lines, f"pushed: {url}"]), token)


def scrubbed(text: str, token: str | None) -> str:
    """`text` without the token, should any library quote it back."""
    return text.replace(token, "***") if token else text


def export_onnx(workspace: Path, name: str) -> str:
    from ..deploy.export import export

    run_dir = finished_run(workspace, name)
    written = export(run_dir, run_dir.parent / f"{run_dir.name}-onnx", overwrite=True)
    return f"exported to {Path(written).relative_to(workspace.resolve()).as_posix()}"
