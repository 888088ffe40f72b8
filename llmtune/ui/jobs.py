"""The workspace's runs as the UI sees them: started as detached `llmtune train` processes, listed with their
status and progress, stopped with SIGTERM and resumed, all from files, so a restarted UI (or a closed browser)
finds them as they are.

The UI keeps its own files in `<workspace>/.llmtune-ui/`: the recipe each run was started from, its console
output (`logs/`) and a small record of the process (`jobs/`). Run directories stay exactly what `llmtune train`
writes, so `--overwrite` and `--resume` treat them as any other run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..common import runs
from ..common.errors import UserError

UI_DIR = ".llmtune-ui"
RUNS_DIR = "runs"
# What the run's console output says when SIGTERM / Ctrl-C stopped it with a checkpoint (cli.train).
RESUMABLE_MARK = "resume with:"
TOTAL_STEPS = re.compile(r"training: .*?([\d,]+) steps of")
_children: dict[int, subprocess.Popen] = {}  # processes this UI started: polled, so none is left a zombie


@dataclass
class RunInfo:
    name: str  # the run directory relative to the workspace (runs/NAME)
    status: str  # running, finished, failed, interrupted
    task: str
    model: str
    method: str
    metrics: dict  # headline metrics of the test (else validation) split
    step: int
    total: int | None
    eta_s: float | None


def inside(workspace: Path, relative: str) -> Path:
    """`relative` as a path in the workspace.

    Raises:
        UserError: an absolute path or one that leaves the workspace.
    """
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UserError(f"{relative!r}: expected a path inside the workspace (relative, no '..')")
    path = (workspace / relative).resolve()
    if not path.is_relative_to(workspace.resolve()):
        raise UserError(f"{relative!r}: leaves the workspace")
    return path


def _key(name: str) -> str:
    return name.replace("/", "--")


def job_file(workspace: Path, name: str) -> Path:
    return workspace / UI_DIR / "jobs" / f"{_key(name)}.json"


def log_file(workspace: Path, name: str) -> Path:
    return workspace / UI_DIR / "logs" / f"{_key(name)}.log"


def read_job(workspace: Path, name: str) -> dict:
    try:
        return json.loads(job_file(workspace, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def checkpoint_step(run_dir: Path) -> int:
    """The newest checkpoint's step (0 without one)."""
    steps = [int(p.name.split("-")[1]) for p in (run_dir / runs.CHECKPOINTS_DIR).glob("step-*") if p.name[5:].isdigit()]
    return max(steps, default=0)


def launch(workspace: Path, name: str, recipe_text: str, resume: bool = False) -> int:
    """Start `llmtune train` for run `name` (runs/NAME) as a detached process (own session, output to its log file),
    so the run outlives the page and the UI; returns its process id.

    Raises:
        UserError: the run is already running, or its directory leaves the workspace.
    """
    run_dir = inside(workspace, name)
    if is_alive(read_job(workspace, name).get("pid")):
        raise UserError(f"{name}: already running; stop it first")
    recipe = workspace / UI_DIR / "recipes" / f"{_key(name)}.yaml"
    log = log_file(workspace, name)
    for folder in (recipe.parent, log.parent, job_file(workspace, name).parent):
        folder.mkdir(parents=True, exist_ok=True)
    runs.write_atomic(recipe, recipe_text)
    command = [sys.executable, "-m", "llmtune", "train", str(recipe), "--output", str(run_dir)]
    command += ["--resume"] if resume else []
    with open(log, "a" if resume else "w", encoding="utf-8") as output:
        process = subprocess.Popen(
            command,
            cwd=workspace,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: closing the UI or the browser does not stop it
        )
    _children[process.pid] = process
    job = {"pid": process.pid, "started": time.time(), "from_step": checkpoint_step(run_dir) if resume else 0}
    runs.write_json(job_file(workspace, name), job)
    return process.pid


def is_alive(pid) -> bool:
    """Whether the training process `pid` still runs (a child of this UI, or one a previous UI started)."""
    if not isinstance(pid, int):
        return False
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ProcessLookupError):
        return False
    return b"llmtune" in cmdline  # not a process that reused the number


def stop(workspace: Path, name: str) -> None:
    """SIGTERM, as the CLI documents: the run finishes its step, writes a checkpoint and exits.

    Raises:
        UserError: the run is not running, or is already stopping.
    """
    job = read_job(workspace, name)
    pid = job.get("pid")
    if not is_alive(pid):
        raise UserError(f"{name}: not running")
    if job.get("stopping") == pid:  # a second signal would end it at once, without its checkpoint
        raise UserError(f"{name}: already stopping; it writes its checkpoint and exits")
    os.killpg(pid, signal.SIGTERM)
    runs.write_json(job_file(workspace, name), {**job, "stopping": pid})


def resume(workspace: Path, name: str) -> int:
    """Continue an interrupted run from its newest checkpoint, with the recipe it started from.

    Raises:
        UserError: no checkpoint to continue from, or already running.
    """
    run_dir = inside(workspace, name)
    if checkpoint_step(run_dir) == 0:
        raise UserError(f"{name}: no checkpoint to resume from")
    recipe = workspace / UI_DIR / "recipes" / f"{_key(name)}.yaml"
    text = recipe.read_text(encoding="utf-8") if recipe.is_file() else (run_dir / runs.RECIPE_FILE).read_text()
    return launch(workspace, name, text, resume=True)


def run_names(workspace: Path) -> list[str]:
    """Runs of the workspace: run directories under runs/ and runs the UI started (perhaps not yet written)."""
    found = {f"{RUNS_DIR}/{p.name}" for p in (workspace / RUNS_DIR).glob("*") if (p / runs.RECIPE_FILE).is_file()}
    for job in (workspace / UI_DIR / "jobs").glob("*.json"):
        found.add(job.stem.replace("--", "/"))
    return sorted(found)


def _tail(path: Path, size: int = 20_000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_entries(run_dir: Path) -> list[dict]:
    """train_log.jsonl's entries (a line being written is skipped)."""
    entries = []
    try:
        lines = (run_dir / runs.LOG_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def headline(run_dir: Path) -> dict:
    """The test split's metrics (else validation's) of a finished run."""
    try:
        metrics = json.loads((run_dir / runs.METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    split = next((s for s in ("test", "validation") if isinstance(metrics.get(s), dict)), None)
    if split is None:
        return {}
    return {f"{split}/{k}": v for k, v in metrics[split].items() if runs.is_metric(k) and isinstance(v, (int, float))}


def recipe_summary(workspace: Path, name: str, run_dir: Path) -> tuple[str, str, str]:
    recipe = run_dir / runs.RECIPE_FILE
    if not recipe.is_file():
        recipe = workspace / UI_DIR / "recipes" / f"{_key(name)}.yaml"
    try:
        raw = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    part = lambda section, key: str((raw.get(section) or {}).get(key, "")) if isinstance(raw, dict) else ""  # noqa
    return part("task", "type"), part("model", "name"), part("method", "type") or "full"


def info(workspace: Path, name: str) -> RunInfo:
    """A run's status, what it trains, its headline metrics and, while it runs, its progress."""
    run_dir = workspace / name
    job = read_job(workspace, name)
    entries = log_entries(run_dir)
    step = max((e["step"] for e in entries if "loss" in e), default=0)
    log_text = _tail(log_file(workspace, name))
    totals = TOTAL_STEPS.findall(log_text)
    total = int(totals[-1].replace(",", "")) if totals else None
    if is_alive(job.get("pid")):
        status = "running"
    elif runs.is_finished_run(run_dir):
        status = "finished"
    elif RESUMABLE_MARK in log_text or (not job and checkpoint_step(run_dir) > 0):
        status = "interrupted"
    else:
        status = "failed"
    eta = None
    done = step - job.get("from_step", 0)
    if status == "running" and total and done > 0:
        eta = (time.time() - job["started"]) / done * (total - step)
    task, model, method = recipe_summary(workspace, name, run_dir)
    return RunInfo(name, status, task, model, method, headline(run_dir), step, total, eta)


def failure(workspace: Path, name: str) -> str:
    """The error lines of a failed run's output (what `llmtune train` said last)."""
    lines = _tail(log_file(workspace, name)).splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    return "\n".join(errors or lines[-5:])
