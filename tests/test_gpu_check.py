"""benchmarks/gpu_check.py runs its checks on the CPU too (`--device cpu --quick`), so that the script a GPU
session runs first has run before: every family trains, reloads to the same metrics and resumes to the same
loss, FSDP2 trains as data-parallel training does and resumes exactly, and the report files are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    checks = report["checks"]
    assert list(checks) == ["families", "qlora", "speed", "generation", "fsdp", "deepspeed"]
    for name, check in checks.items():
        skipped_for_a_reason = check["status"] == "skipped" and check["reason"]
        assert check["status"] == "ok" or (name == "qlora" and skipped_for_a_reason), (name, check)
    families = checks["families"]["families"]
    assert len(families) == 6
    for name, family in families.items():
        # on the CPU bf16 autocast is deterministic: a reload and a resume must match exactly
        assert family["reload_max_difference"] == 0 and family["resume_final_loss_difference"] == 0, name
    assert checks["speed"]["llmtune"]["samples_per_s"] > 0 and checks["speed"]["trainer"]["samples_per_s"] > 0
    assert checks["generation"]["generated_tokens"] > 0
    # two CPU processes, Accelerate's FSDP2 / DeepSpeed forced onto gloo; --quick: one case per engine
    for engine, case in (("fsdp", "classification/encoder"), ("deepspeed", "translation/decoder+lora")):
        assert list(checks[engine]["runs"]) == [case]
        for name, run in checks[engine]["runs"].items():
            assert run["resume_final_loss_difference"] == 0, (engine, name)
            assert run["final_loss_difference_vs_ddp"] < 1e-3, (engine, name)
    assert "| families | ok |" in (out / "gpu_check.md").read_text()
