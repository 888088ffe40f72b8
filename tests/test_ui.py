"""`llmtune ui` driven end to end in a real browser (Debian's headless chromium through Playwright): a run built in
the form trains to the end and shows its metrics, the playground predicts, two runs compare, an invalid value gets
validate's message at its field, and a running run stops and resumes. One UI server for the module.

LLMTUNE_UI_SCREENSHOTS=DIR also writes the README's screenshots (ui-*.png) there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_sentiment_files
from playwright.sync_api import expect, sync_playwright  # the ui extra, which CI installs: never skipped
from test_checkpoints import sets
from test_hub import TOKEN, local_hub  # noqa: F401 (the local hub fixture)

from llmtune.common import runs
from llmtune.common.errors import UserError
from llmtune.inference import prediction
from llmtune.recipe import validate
from llmtune.recipe.starter import builtin_recipes
from llmtune.reports.report import compare
from llmtune.ui import actions, form, jobs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("LLMTUNE_UI_SCREENSHOTS")
STARTING_RECIPE = """model:
  name: models/tiny-bert
task:
  type: classification
data:
  train: data/train.csv
  validation: data/validation.csv
  test: data/test.csv
training:
  epochs: 1
  batch_size: 8
  max_length: 32
output_dir: runs/start
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bert) -> Path:
    """A workspace with the tiny model, the tiny review set and a starting recipe, all inside it."""
    folder = tmp_path_factory.mktemp("workspace")
    shutil.copytree(tiny_bert, folder / "models" / "tiny-bert")
    (folder / "data").mkdir()
    write_sentiment_files(folder / "data")
    (folder / "tiny.yaml").write_text(STARTING_RECIPE)
    return folder


@pytest.fixture(scope="module")
def server(workspace):
    """`llmtune ui` on a free port; stopped (with any run it started) at the end of the module."""
    port = _free_port()
    log = open(workspace.parent / "ui.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "ui", "--workspace", str(workspace), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, (workspace.parent / "ui.log").read_text()
            time.sleep(0.5)
    yield url
    for name in jobs.run_names(workspace):
        pid = jobs.read_job(workspace, name).get("pid")
        if jobs.is_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1100, "height": 760})
        tab.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)
        tab.goto(server)
        tab.wait_for_selector("#start-from")
        yield tab
        browser.close()


def _shot(page, name: str, locator=None) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        (locator or page).screenshot(path=str(Path(SCREENSHOTS) / f"ui-{name}.png"))


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _type(page, ident: str, text: str) -> None:
    """Type as a user does (key by key): the form validates on input."""
    box = page.locator(f"#{ident} textarea, #{ident} input").first
    box.click()
    box.press("Control+a")
    box.press("Delete")
    if text:
        box.press_sequentially(text)


def _load_start(page) -> None:
    _tab(page, "New run")
    _pick(page, "start-from", "workspace: tiny.yaml")
    page.locator("#load-recipe").click()
    expect(page.locator("#field-model-name textarea")).to_have_value("models/tiny-bert")


def _field(key: str) -> str:
    return next(field.ident for field in form.schema_fields() if field.key == key and field.member is None)


def _run_row(page, name: str):
    return page.locator("#runs-table").get_by_role("row").filter(has_text=name)


def _start(page, output_dir: str, edits: dict[str, str] = {}) -> None:  # noqa: B006 (read only)
    _load_start(page)
    _type(page, _field("output_dir"), output_dir)
    for key, text in edits.items():
        _type(page, _field(key), text)
    expect(page.locator("#form-status")).to_contain_text("recipe valid")
    page.locator("#start-run").click()
    expect(page.locator("#start-status")).to_contain_text(f"started {output_dir}")


def test_invalid_value_gets_validates_message_at_its_field(page, workspace):
    _load_start(page)
    batch = _field("training.batch_size")
    _type(page, batch, "abc")
    message = "form: training.batch_size: Input should be a valid integer, unable to parse string as an integer"
    expect(page.locator(f"#{batch}-error")).to_contain_text(message + "; got 'abc'")
    expect(page.locator("#form-status")).to_contain_text(message)
    _type(page, _field("data.train"), "../elsewhere.csv")
    expect(page.locator(f"#{_field('data.train')}-error")).to_contain_text(
        "workspace (relative, no '..'); got '../elsewhere.csv'"
    )
    _shot(page, "new-run")
    page.locator("#start-run").click()  # refused with the same lines, nothing started
    expect(page.locator("#start-status")).to_contain_text("error: " + message)
    _type(page, batch, "8")
    _type(page, _field("data.train"), "data/train.csv")
    expect(page.locator(f"#{batch}-error")).to_be_hidden()
    expect(page.locator("#form-status")).to_contain_text("recipe valid")
    with page.expect_download() as download:  # the form's recipe as a file
        page.locator("#download-yaml").click()
    saved = yaml.safe_load(Path(download.value.path()).read_text())
    assert saved["training"]["batch_size"] == 8 and saved["model"]["name"] == "models/tiny-bert"
    page.locator("#check-data").click()  # llmtune validate's checks beyond the schema: files, labels, tokenizer
    expect(page.locator("#start-status")).to_contain_text("form: ok; model: models/tiny-bert; task: classification")
    expect(page.locator("#start-status")).to_contain_text("data.train: 32 examples")
    page.locator("#estimate-memory").click()  # llmtune estimate's table, from the config alone
    for line in ("optimizer", "activations", "peak (estimated)", "batch: 8 x"):
        expect(page.locator("#start-status")).to_contain_text(line)
    upload = workspace.parent / "typo.yaml"  # an uploaded recipe: loaded, with what the form cannot hold named
    upload.write_text(STARTING_RECIPE.replace("  epochs: 1", "  epocs: 1"))
    page.locator("#upload-recipe input[type=file], input[type=file]").first.set_input_files(str(upload))
    expect(page.locator("#form-status")).to_contain_text("form: unknown key 'training.epocs'; did you mean 'epochs'?")


def test_runs_built_in_the_form_train_and_show_their_metrics(page, workspace):
    _start(page, "runs/a")
    _start(page, "runs/b", {"training.learning_rate": "3e-3"})
    _tab(page, "Runs")
    for name in ("runs/a", "runs/b"):
        expect(_run_row(page, name)).to_contain_text("finished", timeout=150_000)
        metrics = json.loads((workspace / name / "metrics.json").read_text())
        expect(_run_row(page, name)).to_contain_text(f"test/accuracy={metrics['test']['accuracy']:.4f}")
    recipe = (workspace / "runs/b/recipe.yaml").read_text()
    assert "learning_rate: 0.003" in recipe  # the form's edit reached the run
    _pick(page, "run-pick", "runs/a")
    expect(page.locator("#run-detail")).to_contain_text("runs/a: finished, step 4 / 4")
    page.locator("#open-report").click()  # llmtune report's page, in a frame
    expect(page.frame_locator("#report-view iframe").locator("body")).to_contain_text("accuracy")


def _trained(workspace: Path, name: str, *settings: str) -> str:
    """The run `name` as the form trained it (the test above), or, when that test ran on the other worker (the
    suite's pytest-xdist scheduler may split this module, and each worker has its own workspace), cli-NAME trained
    here with these settings: never the same directory as the form's, in whatever order the tests come."""
    if (workspace / name / "metrics.json").is_file():
        return name
    own = name.replace("runs/", "runs/cli-")
    if not (workspace / own / "metrics.json").is_file():
        command = [sys.executable, "-m", "llmtune", "train", "tiny.yaml", "--output", own, *sets(*settings)]
        subprocess.run(command, cwd=workspace, check=True, capture_output=True)
    return own


@pytest.fixture()
def run_a(workspace) -> str:
    return _trained(workspace, "runs/a")


@pytest.fixture()
def run_b(workspace) -> str:
    return _trained(workspace, "runs/b", "training.learning_rate=3e-3")


def test_compare_two_runs(page, workspace, run_a, run_b):
    _tab(page, "Compare")
    page.locator("#compare-refresh").click()
    for name in (run_a, run_b):
        page.locator("#compare-pick label", has_text=name).click()
    page.locator("#compare-go").click()
    header, rows = compare([workspace / run_a, workspace / run_b])
    table = page.locator("#compare-table")
    for row in rows[:3]:
        expect(table.get_by_role("row").filter(has_text=row[0]).first).to_contain_text(row[1])
    expect(table).to_contain_text(header[2])
    expect(page.locator("#compare-plot canvas, #compare-plot svg").first).to_be_visible()
    _shot(page, "compare")


def test_playground_predicts_as_llmtune_predict(page, workspace, run_a):
    _tab(page, "Playground")
    page.locator("#play-refresh").click()
    _pick(page, "play-run", run_a)
    expect(page.locator("#play-question")).to_be_hidden()  # classification asks for text (and text_pair) only
    text = "a wonderful, moving film"
    _type(page, "play-text", text)
    page.locator("#predict").click()
    row = prediction.predict(workspace / run_a, [text])[0]
    expect(page.locator("#play-summary")).to_contain_text(f"predicted: {row['predicted']}  (score {row['score']:.4f})")
    for label in row["probabilities"]:
        expect(page.locator("#play-label")).to_contain_text(label)
    _shot(page, "playground")


def test_share_previews_the_model_card(page, workspace, run_a):
    _tab(page, "Share")
    page.locator("#share-refresh").click()
    _pick(page, "share-run", run_a)
    _type(page, "share-repo", "me/tiny-sentiment")
    page.locator("#share-preview").click()
    expect(page.locator("#share-card")).to_contain_text("name: tiny-sentiment")  # the card's head (the editor
    expect(page.locator("#share-card")).to_contain_text("pipeline_tag: text-classification")  # shows only its top)
    _type(page, "share-repo", "not a repo id")
    page.locator("#share-preview").click()
    expect(page.locator("#share-said")).to_contain_text("error: ")


def test_push_takes_a_typed_token_and_never_says_it(workspace, run_a, local_hub, monkeypatch):
    """The Share tab's push with the password field's token, HF_TOKEN unset."""
    monkeypatch.delenv("HF_TOKEN")
    said = actions.push(workspace, run_a, "acme/tiny-sentiment", False, None, TOKEN)
    assert "pushed: " in said and TOKEN not in said
    assert "README.md" in local_hub.files("acme/tiny-sentiment")
    assert "HF_TOKEN" not in os.environ  # the typed token lasted one push
    with pytest.raises(UserError) as refused:
        actions.push(workspace, run_a, "acme/tiny-sentiment", False, None, TOKEN + "x")
    assert TOKEN not in str(refused.value)


def _wait_for_step_past(workspace: Path, name: str, step: int) -> int:
    deadline = time.time() + 90
    while time.time() < deadline:
        steps = [entry["step"] for entry in jobs.log_entries(workspace / name) if "loss" in entry]
        if steps and steps[-1] > step:
            return steps[-1]
        time.sleep(0.3)
    raise AssertionError(f"{name} did not pass step {step}")


def test_a_running_run_stops_and_resumes(page, workspace):
    """Long enough (100,000 steps) never to end by itself however fast the machine: stopped, resumed, stopped."""
    _load_start(page)
    page.locator(f"#{_field('checkpointing.at_epoch_end')} input").uncheck()  # SIGTERM's checkpoints are the only ones
    edits = {"output_dir": "runs/long", "training.max_steps": "100000", "evaluation.every_n_steps": "100000"}
    for key, text in edits.items():
        _type(page, _field(key), text)
    expect(page.locator("#form-status")).to_contain_text("recipe valid")
    page.locator("#start-run").click()
    expect(page.locator("#start-status")).to_contain_text("started runs/long")
    _tab(page, "Runs")
    _pick(page, "run-pick", "runs/long")
    expect(page.locator("#run-detail")).to_contain_text(re.compile(r"running, step \d+ / 100000, ETA"), timeout=90_000)
    page.locator("#stop-run").click()
    expect(_run_row(page, "runs/long")).to_contain_text("interrupted")
    stopped_at = jobs.checkpoint_step(workspace / "runs/long")
    assert stopped_at >= 10 and not (workspace / "runs/long/metrics.json").exists()
    page.locator("#resume-run").click()
    expect(page.locator("#run-said")).to_contain_text("resumed runs/long")
    _wait_for_step_past(workspace, "runs/long", stopped_at)
    expect(_run_row(page, "runs/long")).to_contain_text("running")
    _shot(page, "runs")
    page.locator("#stop-run").click()
    expect(_run_row(page, "runs/long")).to_contain_text("interrupted")
    assert jobs.checkpoint_step(workspace / "runs/long") > stopped_at
    steps = [entry["step"] for entry in jobs.log_entries(workspace / "runs/long") if "loss" in entry]
    assert steps == sorted(set(steps))  # continued from the checkpoint, not started over
    assert "resum" in jobs.log_file(workspace, "runs/long").read_text().lower()


# --------------------------------------------------------------------------- without a browser: the rules under it


def test_a_host_beyond_loopback_needs_a_password(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("LLMTUNE_UI_AUTH", raising=False)
    code, out, err = cli("ui", "--workspace", str(tmp_path), "--host", "0.0.0.0")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--host 0.0.0.0" in err and "--auth or LLMTUNE_UI_AUTH" in err


def test_paths_from_the_browser_stay_in_the_workspace(tmp_path):
    for bad in ("../outside", "/etc", "runs/../../x", ""):
        with pytest.raises(UserError):
            jobs.inside(tmp_path, bad)
    with pytest.raises(UserError):
        actions.starting_recipe(tmp_path, "workspace:../secret.yaml")
    raw = {"model": {"name": "/abs/model"}, "data": {"train": {"path": "../x.csv"}}, "output_dir": "~/runs"}
    named = {line.split(": ")[1] for line in form.path_problems(raw)}
    assert named == {"model.name", "data.train.path", "output_dir"}


def test_uploads_are_limited_in_size(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * actions.MAX_UPLOAD_BYTES)
    with pytest.raises(UserError, match="at most"):
        actions.uploaded_recipe(str(big))


def test_every_shipped_recipe_survives_the_form():
    """Form values made from a recipe give back the same validated recipe: the form holds every key they use."""
    fields = form.schema_fields()
    for path, _ in builtin_recipes():
        raw = yaml.safe_load(path.read_text())
        raw.setdefault("output_dir", "runs/x")
        again = form.to_raw(fields, form.from_raw(fields, raw))
        assert validate(again).model_dump() == validate(raw).model_dump(), path.name


def test_spans_of_any_task_row_are_highlighted():
    answer = {
        "inputs": {"question": "Who?", "context": "Ada wrote it."},
        "predicted": "Ada",
        "span": {"start": 0, "end": 3},
    }
    assert actions.highlights(answer) == [("Ada", "answer"), (" wrote it.", None)]
    entities = {
        "inputs": {"text": "Ada met Bob"},
        "predicted": [
            {"type": "PER", "text": "Bob", "start": 8, "end": 11},
            {"type": "PER", "text": "Ada", "start": 0, "end": 3},
        ],
    }
    assert actions.highlights(entities) == [("Ada", "PER"), (" met ", None), ("Bob", "PER")]
    assert actions.highlights({"inputs": {"text": "x"}, "predicted": "positive", "probabilities": {}}) == []


def test_the_password_comes_from_auth_or_the_environment(monkeypatch):
    from llmtune.ui.server import access_token

    monkeypatch.delenv("LLMTUNE_UI_AUTH", raising=False)
    assert access_token("127.0.0.1", None) is None  # loopback: no password needed
    assert access_token("0.0.0.0", "typed") == "typed"
    monkeypatch.setenv("LLMTUNE_UI_AUTH", "from-env")
    assert access_token("0.0.0.0", None) == "from-env"


def test_a_run_that_fails_says_why(workspace):
    """A run whose data is missing: listed as failed, with llmtune train's error line."""
    recipe = STARTING_RECIPE.replace("data/train.csv", str(workspace / "data/missing.csv"))
    pid = jobs.launch(workspace, "runs/broken", recipe)
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: closing the UI or its terminal does not end it
    deadline = time.time() + 120
    while jobs.info(workspace, "runs/broken").status == "running" and time.time() < deadline:
        time.sleep(0.5)
    assert jobs.info(workspace, "runs/broken").status == "failed"
    assert "error: " in jobs.failure(workspace, "runs/broken") and "missing.csv" in jobs.failure(
        workspace, "runs/broken"
    )


def test_stop_sends_one_sigterm_only(tmp_path):
    """A second SIGTERM would end a run before its checkpoint: Stop clicked twice sends one."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, lambda *_: open('got-term', 'a').write('x')); "
    stubborn += "time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", stubborn, "llmtune"], cwd=tmp_path, start_new_session=True)
    try:
        jobs.job_file(tmp_path, "runs/x").parent.mkdir(parents=True)
        runs.write_json(jobs.job_file(tmp_path, "runs/x"), {"pid": process.pid, "started": time.time()})
        time.sleep(0.5)  # the handler is installed
        jobs.stop(tmp_path, "runs/x")
        with pytest.raises(UserError, match="already stopping"):
            jobs.stop(tmp_path, "runs/x")
        time.sleep(0.5)
        assert (tmp_path / "got-term").read_text() == "x"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_export_writes_onnx_beside_the_run(workspace, run_a):
    said = actions.export_onnx(workspace, run_a)
    assert said == f"exported to {run_a}-onnx"
    assert (workspace / f"{run_a}-onnx" / "model.onnx").is_file()
    with pytest.raises(UserError):
        actions.export_onnx(workspace, "../elsewhere")
