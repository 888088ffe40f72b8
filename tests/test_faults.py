"""Faults in the middle of writing: SIGKILL while the final model or metrics.json is written, during a merge and
during a push, and a data-parallel peer that hangs. Each ends with a resumable run or the previous state intact.

The killed commands run as real processes (`python -m llmtune ...`) with one function wrapped to pause at the
moment of interest (after writing half of its file, as a kill mid-write leaves it), so the kill lands there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_recipe, write_sentiment_files

# Run the CLI with one function paused mid-write: it writes half its file, touches PAUSE_MARKER and sleeps.
PAUSED_CLI = r"""
import os, pathlib, sys, time
marker = pathlib.Path(os.environ["PAUSE_MARKER"])

def pause():
    marker.touch()
    time.sleep(600)

where = os.environ["PAUSE_AT"]
if where == "model":
    from llmtune.engine import saving
    real_save = saving.save_model
    def save_model(model, tokenizer, run_dir, recipe, *rest):
        real_save(model, tokenizer, run_dir, recipe, *rest)
        weights = pathlib.Path(run_dir) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        pause()
    saving.save_model = save_model
elif where == "metrics":
    from llmtune.common import runs
    real_write = runs.write_atomic
    def write_atomic(path, text):
        if path.name == "metrics.json":
            path.with_name(".metrics.json.partial").write_text(text[: len(text) // 2])
            pause()
        return real_write(path, text)
    runs.write_atomic = write_atomic
elif where == "merge":
    from transformers import PreTrainedModel
    real_save = PreTrainedModel.save_pretrained
    def save_pretrained(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)
        weights = pathlib.Path(folder) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        pause()
    PreTrainedModel.save_pretrained = save_pretrained

from llmtune.cli import main
sys.argv = ["llmtune", *sys.argv[1:]]
main()
"""


def killed_while_paused(where: str, tmp_path: Path, *args, env: dict | None = None) -> None:
    """Run `llmtune ARGS` paused at `where`, and SIGKILL it there."""
    marker = tmp_path / f"paused-{where}"
    environment = {**os.environ, **(env or {}), "PAUSE_AT": where, "PAUSE_MARKER": str(marker)}
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CLI, *map(str, args)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"never reached the pause at {where}: {child.communicate()[1][-2000:]}")
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


@pytest.fixture()
def small_recipe(tiny_bert, tmp_path):
    files = write_sentiment_files(tmp_path, repeat=4)
    return write_recipe(tmp_path / "r.yaml", tiny_bert, files)


def metrics_of(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        split: {k: v for k, v in values.items() if k not in ("runtime_s",) and not k.endswith("_s")}
        for split, values in metrics.items()
        if split != "train"
    }


@pytest.mark.parametrize("where", ["model", "metrics"])
def test_sigkill_while_finishing_leaves_a_run_that_resumes_to_the_same_result(where, small_recipe, tmp_path, cli):
    """Killed while the final model (or metrics.json) is half written: the run is unfinished, and --resume
    finishes it from the last checkpoint to exactly what an uninterrupted run gives."""
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    killed_while_paused(where, tmp_path, "train", small_recipe, "--output", run)
    assert not (run / "metrics.json").exists()  # not a finished run: eval, push and merge refuse it
    code, out, err = cli("eval", run)
    assert code == 2 and "not a finished run" in err
    code, out, err = cli("train", small_recipe, "--output", run, "--resume")
    assert code == 0, err
    code, out, err = cli("train", small_recipe, "--output", tmp_path / "uninterrupted")
    assert code == 0, err
    assert metrics_of(run) == metrics_of(tmp_path / "uninterrupted")
    AutoModelForSequenceClassification.from_pretrained(run)  # whole again


@pytest.fixture()
def lora_run(small_recipe, tmp_path):
    from llmtune import load_recipe, train

    return train(load_recipe(small_recipe, ["method.type=lora"]), output_dir=tmp_path / "lora").run_dir


def test_sigkill_during_merge_leaves_the_previous_merged_model_intact(lora_run, tmp_path, cli):
    merged = tmp_path / "merged"
    code, out, err = cli("merge", lora_run, "--output", merged)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in merged.iterdir()}
    killed_while_paused("merge", tmp_path, "merge", lora_run, "--output", merged, "--overwrite")
    assert {p.name: p.read_bytes() for p in merged.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("merged")] == ["merged"]  # no half model beside it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_hung_peer_stops_the_survivor_after_the_collective_timeout(small_recipe, tmp_path):
    """Two data-parallel processes; one stops answering (SIGSTOP, as a hung machine). The other does not wait forever:
    after training.collective_timeout_s it exits with one line, and the run can resume from its checkpoint."""
    run = tmp_path / "run"
    port = free_port()
    settings = [
        "training.max_steps=400",
        "training.batch_size=2",
        "training.log_every_n_steps=1",
        "training.collective_timeout_s=10",
        "checkpointing.every_n_steps=2",
        "evaluation.every_n_steps=1000",
    ]
    args = [arg for item in settings for arg in ("--set", item)]
    workers = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "llmtune", "train", str(small_recipe), "--output", str(run), *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    survivor, hung = workers
    try:
        deadline = time.monotonic() + 240
        while not list(run.glob("checkpoints/step-*")):  # training is under way, with a checkpoint to resume from
            assert time.monotonic() < deadline and survivor.poll() is None, survivor.stderr.read()[-2000:]
            time.sleep(0.5)
        hung.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        out, err = survivor.communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for worker in workers:
            worker.kill()
    assert survivor.returncode == 1, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert lines and lines[-1].startswith("error: another training process stopped or stopped answering at step ")
    assert lines[-1].endswith("Continue from the last checkpoint with --resume") and waited < 100
    assert list((run / "checkpoints").glob("step-*"))  # resumable


def test_sigkill_during_push_commits_all_or_nothing(tmp_path, tiny_bert, cli, monkeypatch):
    """A push killed while its commit is in flight leaves the repository with all of the run or none of it;
    pushing again then completes it."""
    from hub_server import HubServer
    from test_hub import TOKEN, point_hub_client_at

    from llmtune import load_recipe, train

    files = write_sentiment_files(tmp_path, repeat=2)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files, "method:\n  type: lora\n")
    run = train(load_recipe(recipe, ["training.max_steps=2"]), output_dir=tmp_path / "run").run_dir
    with HubServer(tmp_path / "storage", {TOKEN: "alice"}) as hub:
        point_hub_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        hub.hold_commits = True
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1",
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "llmtune", "push", str(run), "--repo-id", "alice/run"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert hub.commit_arrived.wait(180), child.communicate()[1][-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        hub.release_commits()
        time.sleep(1)
        pushed = set(hub.files("alice/run"))
        whole = {"adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "metrics.json", "README.md"}
        assert pushed == {".gitattributes"} or whole <= pushed, pushed
        hub.hold_commits = False
        code, out, err = cli("push", run, "--repo-id", "alice/run")
        assert code == 0, err
        assert whole <= set(hub.files("alice/run"))
