"""Never lose a run: checkpoints, resume after SIGKILL / SIGTERM, damaged checkpoints, early stopping,
two processes, determinism. The subprocess tests run `python -m llmtune` as a user (or a scheduler) would."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, torchrun, write_recipe, write_sentiment_files
from safetensors.torch import load_file

# 32 examples, batches of 4: 8 steps per epoch, 16 in all; dropout is on, so RNG restoring matters.
SETTINGS = [
    "training.batch_size=4",
    "training.epochs=2",
    "training.learning_rate=1e-2",
    "training.log_every_n_steps=1",
    "training.eval_batch_size=5",
    "evaluation.every_n_steps=4",
    "checkpointing.every_n_steps=1",
    "checkpointing.keep_last=3",
]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def llmtune(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmtune", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def assert_same_result(run, reference) -> None:
    """Final validation metrics within 1e-6 and final weights allclose at 1e-6."""
    ours, theirs = (json.loads((path / "metrics.json").read_text()) for path in (run, reference))
    for split in ("validation", "test"):
        assert ours[split]["num_examples"] == theirs[split]["num_examples"]
        for metric in ("accuracy", "macro_f1", "cross_entropy"):
            assert ours[split][metric] == pytest.approx(theirs[split][metric], abs=1e-6), (split, metric)
    weights, expected = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(weights[name], expected[name], atol=1e-6, rtol=0), name

    def logged(path):
        return [e for e in map(json.loads, (path / "train_log.jsonl").read_text().splitlines()) if "loss" in e]

    ours_log, their_log = logged(run), logged(reference)
    assert [e["step"] for e in ours_log] == [e["step"] for e in their_log]  # every step logged once
    assert [e["loss"] for e in ours_log] == pytest.approx([e["loss"] for e in their_log], abs=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    """The recipe and an uninterrupted reference run."""
    base = tmp_path_factory.mktemp("resume")
    files = write_sentiment_files(base, repeat=8)
    recipe = write_recipe(base / "r.yaml", tiny_bert, files)
    code, out, err = finish(llmtune("train", recipe, *sets(*SETTINGS), "--output", base / "reference"))
    assert code == 0, err
    return recipe, base / "reference"


def checkpoint_steps(run) -> list[int]:
    root = run / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step-")) if root.is_dir() else []


@pytest.mark.slow
def test_sigkill_mid_checkpoint_then_resume_equals_uninterrupted(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    process = llmtune("train", recipe, *sets(*SETTINGS), "--output", run)
    # Kill as soon as a checkpoint is being written while an earlier one is complete.
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        root = run / "checkpoints"
        if checkpoint_steps(run) and root.is_dir() and any(p.name.startswith(".tmp-step") for p in root.iterdir()):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-checkpoint"
    assert not (run / "metrics.json").exists()
    killed_at = checkpoint_steps(run)[-1]
    assert killed_at < 16

    code, out, err = finish(llmtune("train", recipe, *sets(*SETTINGS), "--output", run, "--resume"))
    assert code == 0, err
    assert f"resuming from {run / 'checkpoints'}" in out
    assert not any(p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())
    assert_same_result(run, reference)


@pytest.mark.slow
def test_sigterm_saves_prints_resume_command_and_resumes_identically(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    process = llmtune("train", recipe, *sets(*SETTINGS), "--output", run)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not checkpoint_steps(run):
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    stopped_at = checkpoint_steps(run)[-1]
    assert stopped_at < 16 and not (run / "metrics.json").exists()
    command = next(line for line in err.splitlines() if line.startswith("resume with: ")).removeprefix("resume with: ")
    argv = shlex.split(command)
    assert argv[:2] == ["llmtune", "train"] and "--resume-from" in argv

    code, out, err = finish(llmtune(*argv[1:]))
    assert code == 0, err
    assert f"(step {stopped_at})" in out
    assert_same_result(run, reference)


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    settings = sets(
        "training.batch_size=4",
        "training.max_steps=6",
        "training.log_every_n_steps=1",
        "checkpointing.every_n_steps=2",
        "checkpointing.keep_last=5",
    )
    code, out, err = cli("train", recipe, *settings)
    assert code == 0, err
    run = tmp_path / "run"
    assert checkpoint_steps(run) == [2, 4, 6]
    weights = run / "checkpoints" / "step-6" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk
    (run / "checkpoints" / ".tmp-step-8").mkdir()  # a checkpoint being written when the run was killed

    from llmtune.common.errors import Notice

    with pytest.warns(
        Notice, match=r"skipping checkpoint .*step-6: incomplete or damaged .trainable.safetensors has 1000 bytes"
    ):
        code, out, err = cli("train", recipe, *settings, "--resume")
    assert code == 0, err
    assert "skipping" not in out  # a warning, not one of the run's own lines (the CLI prints it on stderr)
    assert f"resuming from {run / 'checkpoints' / 'step-4'} (step 4)" in out
    assert not (run / "checkpoints" / ".tmp-step-8").exists()
    steps = [e["step"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # the redone steps are logged once


def test_resume_refuses_a_recipe_that_changes_what_is_trained(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, *sets("training.max_steps=2"))
    assert code == 0, err
    code, out, err = cli(
        "train",
        recipe,
        *sets("training.max_steps=4", "method.type=lora", f"data.test={sentiment_files['train']}"),
        "--resume",
    )
    assert code == 2
    assert (
        err.startswith("error: --resume: the recipe differs")
        and "method.type: 'full' -> 'lora'" in err
        and "data.test.path" in err
    )
    assert "training.max_steps" not in err  # extending a run is allowed
    code, out, err = cli("train", recipe, "--resume-from", tmp_path / "nowhere")
    assert code == 2 and "is not a run directory" in err


def test_early_stopping_keeps_and_uses_the_best_checkpoint(cli, tiny_bert, sentiment_files, tmp_path):
    # Cross-entropy falls as the model learns, so "best = highest cross-entropy" stops improving
    # after the first evaluation.
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli(
        "train",
        recipe,
        *sets(
            "training.batch_size=4",
            "training.max_steps=20",
            "training.learning_rate=1e-2",
            "evaluation.every_n_steps=2",
            "evaluation.metric_for_best=cross_entropy",
            "evaluation.mode=max",
            "evaluation.early_stopping_patience=1",
            "checkpointing.at_epoch_end=false",
            "training.log_every_n_steps=1",
        ),
    )
    assert code == 0, err
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    evaluations = [e for e in log if e.get("split") == "validation"][:-1]  # the last line is the final evaluation
    # Where patience 1 must stop: the first evaluation that is not higher than the best before it.
    best, stop_at = evaluations[0], None
    for entry in evaluations[1:]:
        if entry["cross_entropy"] > best["cross_entropy"]:
            best = entry
        else:
            stop_at = entry["step"]
            break
    assert stop_at is not None and stop_at < 20, "the metric kept improving; the test needs a run that stops early"
    assert f"early stopping at step {stop_at}" in out and f"using the best checkpoint: step {best['step']}" in out
    assert max(e["step"] for e in log if "loss" in e) == stop_at
    assert best["step"] in checkpoint_steps(run)  # kept, whatever keep_last says
    saved = load_file(run / "model.safetensors")
    for name, tensor in load_file(run / "checkpoints" / f"step-{best['step']}" / "trainable.safetensors").items():
        assert torch.equal(saved[name], tensor), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["cross_entropy"] == pytest.approx(best["cross_entropy"], abs=1e-6)


def test_same_seed_gives_the_same_metrics(cli, tiny_bert, sentiment_files, tmp_path):
    results = []
    for name in ("first", "second"):
        recipe = write_recipe(tmp_path / f"{name}.yaml", tiny_bert, sentiment_files)
        code, out, err = cli(
            "train",
            recipe,
            *sets("training.batch_size=4", "training.max_steps=6", "training.learning_rate=1e-2"),
            "--output",
            tmp_path / name,
        )
        assert code == 0, err
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        # Everything but the evaluation's wall time must match.
        results.append(
            {split: {k: v for k, v in metrics[split].items() if k != "runtime_s"} for split in ("validation", "test")}
        )
    assert results[0] == results[1]


@pytest.mark.slow
def test_two_processes_train_evaluate_once_and_resume_across_process_counts(setup, tmp_path, cli):
    recipe, _ = setup
    run = tmp_path / "run"
    two = torchrun("-m", "llmtune", "train", recipe, "--output", run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        [*two, *sets(*SETTINGS, "training.max_steps=6")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (
        "2 process(es)" in finished.stdout and finished.stdout.count("run saved to") == 1
    )  # only the main process talks
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4, 5, 6]  # written once, not once per process
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 32
    # 7 evaluation batches of 5 over 2 processes: uneven shards, yet each example counted once, and the
    # metrics equal a one-process evaluation of the saved weights.
    trained = json.loads((run / "metrics.json").read_text())["validation"]
    code, out, err = cli("eval", run, "--split", "validation", "--output", tmp_path / "eval.json")
    assert code == 0, err
    single = json.loads((tmp_path / "eval.json").read_text())
    assert single["num_examples"] == trained["num_examples"] == 32
    for metric in ("accuracy", "macro_f1", "cross_entropy"):
        assert single[metric] == pytest.approx(trained[metric], abs=1e-6)

    # Written by 2 processes, extended in 1, then extended again in 2.
    code, out, err = finish(
        llmtune("train", recipe, *sets(*SETTINGS, "training.max_steps=9"), "--output", run, "--resume")
    )
    assert code == 0, err
    assert "(step 6)" in out and "1 process(es)" in out
    finished = subprocess.run(
        [*two, *sets(*SETTINGS, "training.max_steps=12"), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "(step 9)" in finished.stdout
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 12
    assert [
        e["step"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in e
    ] == list(range(1, 13))


@pytest.mark.slow
def test_two_processes_evaluate_a_split_smaller_than_one_batch(setup, tmp_path):
    """One evaluation batch for two processes: the second has none, and must not wait for the first forever."""
    recipe, _ = setup
    args = sets(*SETTINGS, "training.max_steps=2", "training.eval_batch_size=64")
    finished = subprocess.run(
        torchrun("-m", "llmtune", "train", recipe, *args, "--output", tmp_path / "run"),
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]["num_examples"] == 32


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_the_loopback_train_as_two_processes_on_one_node_do(setup, tmp_path):
    recipe, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "llmtune", "train", str(recipe), *sets(*SETTINGS, "training.max_steps=6"), "--output"]
    one_node = torchrun(*train, tmp_path / "one")
    finished = subprocess.run(one_node, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                *train,
                str(tmp_path / "two"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "2 process(es)" in outputs[0][0] and "run saved to" not in outputs[1][0]  # node 0 talks and writes
    assert_same_result(tmp_path / "two", tmp_path / "one")
