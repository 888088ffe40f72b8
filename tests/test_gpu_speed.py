"""benchmarks/gpu_speed.py runs on the CPU (`--device cpu --quick`) with the same code a GPU session runs: every
configuration in its own process, rounds in rotated order, warmup reported apart from the steady state, and the
JSON and Markdown reports written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_speed.py"
FIGURES = ["setup_s", "warmup_s", "steady_step_s", "samples_per_s", "tokens_per_s", "mfu_measured_peak",
           "mfu_nominal_peak", "peak_gpu_memory_mb", "batches"]  # fmt: skip


def run_quick(out, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def check_report(report: dict, out, workloads: dict[str, list[str]], rounds: int = 2) -> None:
    assert report["rounds"] == rounds and len(report["orders"]) == rounds
    if rounds == 2:
        first, second = report["orders"]
        assert second == first[1:] + first[:1]  # the second round starts where the first one's second run was
    for workload, configs in workloads.items():
        for config in configs:
            runs = report["results"][workload][config]
            assert len(runs) == rounds and all(run["status"] == "ok" for run in runs), (workload, config, runs)
            for run in runs:
                figures, steps = run["figures"], run["per_step"]
                assert all(key in figures for key in FIGURES), figures
                # warmup (the first step) apart from the steady steps that follow it
                assert figures["warmup_steps"] == 1 and figures["steady_steps"] == len(steps["seconds"]) - 1 >= 2
                assert figures["warmup_s"] == pytest.approx(steps["seconds"][0], abs=1e-3)
                assert figures["samples_per_s"] == pytest.approx(
                    sum(steps["samples"][1:]) / sum(steps["seconds"][1:]), rel=1e-3
                )
                assert figures["setup_s"] > 0 and figures["tokens_per_s"] > figures["samples_per_s"] > 0
        peers = [c for c in configs if not c.startswith("llmtune")]
        for peer in peers:
            assert len(report["table"][workload][peer]["llmtune_over_peer_samples_per_s"]) == rounds
    table = (out / "results.md").read_text()
    assert "| workload | configuration |" in table and "llmtune / peer" in table
    for workload, configs in workloads.items():
        assert all(f"| {workload} | {config} |" in table for config in configs)


def test_rounds_rotate_and_warmup_is_apart_from_the_steady_state(tmp_path):
    """Two configurations of the BERT workload, two rounds: four processes."""
    report = run_quick(
        tmp_path, "--workloads", "bert-sst2", "--configs", "llmtune-defaults", "trainer", "--budget-s", "1500"
    )
    check_report(report, tmp_path, {"bert-sst2": ["llmtune-defaults", "trainer"]})


@pytest.mark.slow
def test_every_workload_runs_on_the_cpu(tmp_path):
    """Every workload and peer once (a smoke round: the rotation is the test above's), so that a GPU session's
    minutes are not the first to run them."""
    report = run_quick(tmp_path, "--rounds", "1", "--budget-s", "3000")  # a loaded CPU: no run skipped for time
    expected = {
        "bert-sst2": ["llmtune-defaults", "llmtune-budget", "trainer"],
        "llama1b-lora": ["llmtune", "trainer-peft"],
        "llama1b-qlora": ["llmtune", "trainer-peft"],
        "llama1b-full": ["llmtune", "trainer"],
    }
    check_report(report, tmp_path, expected, rounds=1)
    trl = report["results"]["llama1b-lora"]["trl-sft"]
    assert all(run["status"] == "ok" for run in trl) or all(run["reason"] == "trl is not installed" for run in trl)


def test_a_run_that_would_not_fit_the_budget_is_skipped(tmp_path):
    report = run_quick(tmp_path, "--workloads", "llama1b-full", "--budget-s", "1")
    runs = [run for configs in report["results"].values() for runs in configs.values() for run in runs]
    assert runs and all(run["status"] == "skipped" and "budget" in run["reason"] for run in runs)
    assert "skipped llama1b-full/llmtune" in (tmp_path / "results.md").read_text()
