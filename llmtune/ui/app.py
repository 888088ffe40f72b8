"""The page: five tabs (New run, Runs, Compare, Playground, Share) built with Gradio over `form`, `jobs` and
`actions`. Handlers turn a UserError into its message on the page; nothing here knows a task or a recipe key."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import tasks
from ..common.errors import UserError
from . import actions, form, jobs

REFRESH_S = 1.5
RUN_COLUMNS = ["run", "status", "task", "model", "method", "progress", "eta", "metrics"]
CSS = ".field-error p { color: #b91c1c; font-size: 0.85em; margin: 0 } .field-error { padding: 0 4px }"


def _said(error: Exception) -> str:
    """A handler's failure as one line per problem, never a traceback."""
    if isinstance(error, UserError):
        return "\n".join(f"error: {line}" for line in str(error).splitlines())
    return f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _code_block(text: str) -> str:
    return "```\n" + text.replace("```", "'''") + "\n```"


# --------------------------------------------------------------------------- New run


def _form_outputs(fields, values) -> list:
    """Validation state for the page: one error box per field, the summary and the YAML preview."""
    raw, lines, by_key = form.check(fields, values)
    chosen = {field.section: value for field, value in zip(fields, values) if field.is_type}
    errors = []
    for field in fields:
        shown = by_key.get(field.key, []) if field.member in (None, chosen.get(field.section)) else []
        errors.append(gr.update(value="\n\n".join(html.escape(line) for line in shown), visible=bool(shown)))
    summary = _code_block("\n".join(lines)) if lines else "recipe valid (schema); **Check data** also reads the files"
    return [*errors, summary, form.dump(raw)]


def _form_fields(fields: list[form.FormField]):
    """One accordion per recipe section; each field with its error line beneath it; a union member's fields in a
    group shown while its type is picked."""
    titles = form.section_titles()
    inputs, errors, groups = [], [], {}
    for section in dict.fromkeys(field.section for field in fields):
        with gr.Accordion(f"{section or 'run'}: {titles.get(section, '')}", open=True):
            for field in [f for f in fields if f.section == section]:
                with _MemberGroup(groups, field, fields):
                    inputs.append(_component(field))
                    errors.append(
                        gr.Markdown(visible=False, elem_id=f"{field.ident}-error", elem_classes="field-error")
                    )
    return inputs, errors, groups


def _new_run_tab(workspace: Path):
    fields = form.schema_fields()
    with gr.Row():
        start_from = gr.Dropdown(actions.starting_points(workspace), label="Start from", elem_id="start-from", scale=3)
        load = gr.Button("Load", elem_id="load-recipe", scale=1)
        upload = gr.UploadButton("Upload YAML", file_types=[".yaml", ".yml"], elem_id="upload-recipe", scale=1)
    summary = gr.Markdown(elem_id="form-status")
    inputs, errors, groups = _form_fields(fields)
    with gr.Row():
        check = gr.Button("Check data", elem_id="check-data")
        estimate = gr.Button("Estimate memory", elem_id="estimate-memory")
        start = gr.Button("Start training", variant="primary", elem_id="start-run")
        download = gr.DownloadButton("Download YAML", elem_id="download-yaml")
    result = gr.Markdown(elem_id="start-status")
    preview = gr.Code(language="yaml", label="recipe preview", elem_id="yaml-preview")
    # The download button downloads its value when clicked: the current form's YAML, rewritten at every check.
    outputs = [*errors, summary, preview, download]

    def validate_form(*values):
        return [*_form_outputs(fields, list(values)), _download(workspace, fields, list(values))]

    gr.on([c.input for c in inputs], validate_form, inputs, outputs, trigger_mode="always_last", show_progress="hidden")
    for section, members in groups.items():
        selector = inputs[next(i for i, f in enumerate(fields) if f.is_type and f.section == section)]
        selector.change(
            lambda chosen, members=members: [gr.update(visible=tag == chosen) for tag in members],
            selector,
            list(members.values()),
        )
        selector.change(validate_form, inputs, outputs, show_progress="hidden")

    def fill(raw: dict):
        values = form.from_raw(fields, raw)
        unknown = [line for line in form.problems(raw) if "unknown key" in line]  # what the form cannot show
        shown = validate_form(*values)
        if unknown:
            shown[-3] = _code_block("\n".join(unknown)) + "\n\n" + shown[-3]
        return [*values, *shown]

    def load_choice(choice):
        try:
            return fill(actions.starting_recipe(workspace, choice))
        except UserError as error:
            return [*(gr.update() for _ in inputs + errors), _said(error), gr.update(), gr.update()]

    def load_upload(file):
        try:
            return fill(actions.uploaded_recipe(file))
        except UserError as error:
            return [*(gr.update() for _ in inputs + errors), _said(error), gr.update(), gr.update()]

    load.click(load_choice, start_from, [*inputs, *outputs])
    upload.upload(load_upload, upload, [*inputs, *outputs])
    check.click(lambda *v: _guarded(actions.check_data, workspace, *form.check(fields, list(v))[:2]), inputs, result)
    estimate.click(lambda *v: _estimate(workspace, fields, list(v)), inputs, result)
    start.click(lambda *v: _start(workspace, fields, list(v)), inputs, result)


class _MemberGroup:
    """A union member's fields live in one group, shown while its type is picked."""

    def __init__(self, groups: dict, field: form.FormField, fields):
        self.groups, self.field, self.fields = groups, field, fields
        self.context = None

    def __enter__(self):
        if self.field.member is None:
            return None
        members = self.groups.setdefault(self.field.section, {})
        if self.field.member not in members:
            default = next(f.default for f in self.fields if f.is_type and f.section == self.field.section)
            members[self.field.member] = gr.Group(visible=self.field.member == default)
        self.context = members[self.field.member]
        return self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)


def _component(field: form.FormField):
    label = f"{field.name}" + (f" ({field.member})" if field.member else "")
    if field.kind == "choice":
        return gr.Dropdown(
            list(field.choices), value=field.default, label=label, info=field.help(), elem_id=field.ident
        )
    if field.kind == "multi":
        return gr.CheckboxGroup(list(field.choices), value=[], label=label, info=field.help(), elem_id=field.ident)
    if field.kind == "flag":
        return gr.Checkbox(value=bool(field.default), label=label, info=field.help(), elem_id=field.ident)
    placeholder = "" if field.default in (None, [], {}) else f"default: {form._shown(field.default)}"
    return gr.Textbox(label=label, info=field.help(), placeholder=placeholder, elem_id=field.ident, max_lines=4)


def _guarded(function, *args):
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 (a page shows one line, never a traceback)
        return _said(error)


def _estimate(workspace: Path, fields, values) -> str:
    shown = _guarded(actions.estimate_memory, workspace, *form.check(fields, values)[:2])
    return shown if shown.startswith("error: ") else _code_block(shown)


def _start(workspace: Path, fields, values) -> str:
    raw, lines, _ = form.check(fields, values)
    try:
        name = actions.start(workspace, raw, lines)
    except Exception as error:  # noqa: BLE001
        return _said(error)
    return f"started **{name}**: follow it on the Runs tab"


def _download(workspace: Path, fields, values):
    raw = form.to_raw(fields, values)
    name = Path(str(raw.get("output_dir") or "recipe")).name or "recipe"
    folder = workspace / jobs.UI_DIR / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(form.dump(raw), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- Runs


def _runs_table(workspace: Path) -> pd.DataFrame:
    rows = []
    for name in jobs.run_names(workspace):
        run = jobs.info(workspace, name)
        progress = f"{run.step}/{run.total}" if run.total else (str(run.step) if run.step else "")
        eta = f"{run.eta_s:.0f}s" if run.eta_s is not None else ""
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in list(run.metrics.items())[:3])
        rows.append([name, run.status, run.task, run.model, run.method, progress, eta, metrics])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _curve(workspace: Path, name: str | None) -> pd.DataFrame:
    entries = jobs.log_entries(workspace / name) if name else []
    return pd.DataFrame(
        [{"step": e["step"], "loss": e["loss"], "series": "train"} for e in entries if "loss" in e],
        columns=["step", "loss", "series"],
    )


def _run_detail(workspace: Path, name: str | None) -> str:
    if not name:
        return "pick a run"
    run = jobs.info(workspace, name)
    line = f"**{name}**: {run.status}"
    if run.total:
        line += f", step {run.step} / {run.total}"
    if run.eta_s is not None:
        line += f", ETA {run.eta_s:.0f} s"
    if run.status == "failed":
        line += "\n\n" + _code_block(jobs.failure(workspace, name))
    return line


def _runs_tab(workspace: Path, timer):
    table = gr.Dataframe(_runs_table(workspace), interactive=False, elem_id="runs-table", label="runs")
    with gr.Row():
        pick = gr.Dropdown(jobs.run_names(workspace), label="run", elem_id="run-pick", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id="stop-run", scale=1)
        resume = gr.Button("Resume", elem_id="resume-run", scale=1)
        report = gr.Button("Open report", elem_id="open-report", scale=1)
    detail = gr.Markdown(elem_id="run-detail")
    said = gr.Markdown(elem_id="run-said")
    plot = gr.LinePlot(_curve(workspace, None), x="step", y="loss", color="series", elem_id="loss-plot", height=260)
    report_view = gr.HTML(elem_id="report-view")

    def refresh(name):
        names = jobs.run_names(workspace)
        return _runs_table(workspace), gr.update(choices=names), _run_detail(workspace, name), _curve(workspace, name)

    timer.tick(refresh, pick, [table, pick, detail, plot], show_progress="hidden")
    pick.change(lambda name: (_run_detail(workspace, name), _curve(workspace, name)), pick, [detail, plot])
    stop.click(lambda name: _guarded(lambda: jobs.stop(workspace, name or "") or f"stopping {name}"), pick, said)
    resume.click(lambda name: _guarded(lambda: jobs.resume(workspace, name or "") and f"resumed {name}"), pick, said)

    def open_report(name):
        try:
            page = actions.report_html(workspace, name)
        except Exception as error:  # noqa: BLE001
            return _said(error), ""
        frame = f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:700px;border:0"></iframe>'
        return f"report of {name}", frame

    report.click(open_report, pick, [said, report_view])


# --------------------------------------------------------------------------- Compare, Playground, Share


def _compare_tab(workspace: Path):
    with gr.Row():
        picked = gr.CheckboxGroup(actions.finished_runs(workspace), label="runs", elem_id="compare-pick", scale=4)
        refresh = gr.Button("Refresh list", elem_id="compare-refresh", scale=1)
        go = gr.Button("Compare", variant="primary", elem_id="compare-go", scale=1)
    said = gr.Markdown(elem_id="compare-said")
    table = gr.Dataframe(interactive=False, elem_id="compare-table", label="metrics")
    plot = gr.LinePlot(x="step", y="loss", color="run", elem_id="compare-plot", height=260)

    def run(names):
        try:
            header, rows, curves = actions.compare(workspace, names)
        except Exception as error:  # noqa: BLE001
            return _said(error), None, None
        return "", pd.DataFrame(rows, columns=header), pd.DataFrame(curves, columns=["step", "loss", "run"])

    go.click(run, picked, [said, table, plot])
    refresh.click(lambda: gr.update(choices=actions.finished_runs(workspace)), None, picked)


def _playground_tab(workspace: Path):
    with gr.Row():
        pick = gr.Dropdown(actions.finished_runs(workspace), label="finished run", elem_id="play-run", scale=4)
        refresh = gr.Button("Refresh list", elem_id="play-refresh", scale=1)
    inputs = {
        name: gr.Textbox(
            label=name, info=help_text, lines=3 if name in ("text", "context") else 1, elem_id=f"play-{name}"
        )
        for name, help_text in tasks.predict_fields().items()
    }
    go = gr.Button("Predict", variant="primary", elem_id="predict")
    summary = gr.Markdown(elem_id="play-summary")
    label = gr.Label(label="probabilities", elem_id="play-label", visible=False)
    marked = gr.HighlightedText(label="spans", elem_id="play-highlight", visible=False)
    row_view = gr.JSON(label="prediction row", elem_id="play-row")

    def choose(name):
        try:
            fields = actions.predict_fields(workspace, name)
        except Exception as error:  # noqa: BLE001
            return [_said(error), *(gr.update() for _ in inputs)]
        return ["", *(gr.update(visible=field in fields) for field in inputs)]

    def run(name, *values):
        try:
            row = actions.predict(workspace, name, dict(zip(inputs, values)))
        except Exception as error:  # noqa: BLE001
            return _said(error), gr.update(visible=False), gr.update(visible=False), None
        predicted = row.get("predicted")
        text = predicted if isinstance(predicted, str) else None
        if isinstance(predicted, list) and all(isinstance(item, str) for item in predicted):  # a multi-label set
            text = ", ".join(predicted) or "(no label)"
        line = f"**predicted**: {html.escape(text)}" if text is not None else "**predicted**: see the spans below"
        if row.get("score") is not None:
            line += f"  (score {row['score']:.4f})"
        probabilities = row.get("probabilities")
        spans = actions.highlights(row)
        return (
            line,
            gr.update(value=probabilities, visible=bool(probabilities)),
            gr.update(value=spans, visible=bool(spans)),
            row,
        )

    pick.change(choose, pick, [summary, *inputs.values()])
    refresh.click(lambda: gr.update(choices=actions.finished_runs(workspace)), None, pick)
    go.click(run, [pick, *inputs.values()], [summary, label, marked, row_view])


def _share_tab(workspace: Path):
    with gr.Row():
        pick = gr.Dropdown(actions.finished_runs(workspace), label="finished run", elem_id="share-run", scale=4)
        refresh = gr.Button("Refresh list", elem_id="share-refresh", scale=1)
    with gr.Row():
        repo = gr.Textbox(label="repository", placeholder="ORG/NAME", elem_id="share-repo")
        license_ = gr.Textbox(label="license", placeholder="e.g. apache-2.0", elem_id="share-license")
        private = gr.Checkbox(label="private", elem_id="share-private")
    token = gr.Textbox(
        label="token",
        type="password",
        elem_id="share-token",
        info="Hub token with write access; empty: HF_TOKEN from the environment or `hf auth login`. Never shown.",
    )
    with gr.Row():
        preview = gr.Button("Preview model card", elem_id="share-preview")
        push = gr.Button("Push", variant="primary", elem_id="share-push")
        export = gr.Button("Export ONNX", elem_id="share-export")
    said = gr.Markdown(elem_id="share-said")
    card = gr.Code(language="markdown", label="model card", elem_id="share-card")

    def show_card(name, repo_id, license):
        try:
            return "", actions.card(workspace, name, repo_id, license)
        except Exception as error:  # noqa: BLE001
            return _said(error), ""

    def do_push(name, repo_id, license, is_private, typed):
        try:
            return actions.push(workspace, name, repo_id, is_private, license, typed)
        except Exception as error:  # noqa: BLE001
            return actions.scrubbed(_said(error), typed)

    preview.click(show_card, [pick, repo, license_], [said, card])
    push.click(do_push, [pick, repo, license_, private, token], said)
    export.click(lambda name: _guarded(actions.export_onnx, workspace, name), pick, said)
    refresh.click(lambda: gr.update(choices=actions.finished_runs(workspace)), None, pick)


def build(workspace: Path) -> gr.Blocks:
    """The UI for one workspace."""
    with gr.Blocks(title="llmtune") as page:
        gr.Markdown(f"## llmtune &nbsp; <small>workspace `{html.escape(str(workspace))}`</small>")
        timer = gr.Timer(REFRESH_S)
        with gr.Tabs():
            with gr.Tab("New run", id="new"):
                _new_run_tab(workspace)
            with gr.Tab("Runs", id="runs"):
                _runs_tab(workspace, timer)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(workspace)
            with gr.Tab("Playground", id="playground"):
                _playground_tab(workspace)
            with gr.Tab("Share", id="share"):
                _share_tab(workspace)
    return page
