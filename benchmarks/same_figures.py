"""Whether two outputs of benchmarks/same_figures.sh hold the same figures: metrics.json (timings and the measured
matmul peak aside), predictions.jsonl, the saved weights (sha256), `llmtune eval`'s metrics and predictions, and
the logs (timings, paths and progress bars aside). Prints one line per file, then ALL SAME or SOME DIFFER.

Usage: python benchmarks/same_figures.py OUT_BEFORE OUT_AFTER
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from pathlib import Path

RUNS = ("sentiment", "generative", "qa")
# Measurements of the machine, not results of the run.
TIMINGS = ("runtime_s", "matmul_peak_gflops", "mfu")
LOG_NOISE = ("samples/s", "elapsed", "throughput", "runtime", "saved to", "written to", "it/s]", "s/it]")


def figures(value):
    """A metrics mapping without its timings (speeds, seconds, memory peaks), at any depth."""
    if isinstance(value, dict):
        return {
            key: figures(item)
            for key, item in value.items()
            if key not in TIMINGS and not key.endswith(("_per_s", "_s", "_mb"))
        }
    return value


def log_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").replace("\r", "\n").splitlines()
    return [line for line in lines if not any(noise in line for noise in LOG_NOISE)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(before: Path, after: Path) -> bool:
    same_everywhere = True

    def report(name: str, same: bool) -> None:
        nonlocal same_everywhere
        same_everywhere &= same
        print(f"{name}: {'same' if same else 'DIFFERENT'}")

    for run in RUNS:
        for name in ("metrics.json",):
            report(
                f"{run}/{name}",
                figures(json.loads((before / run / name).read_text()))
                == figures(json.loads((after / run / name).read_text())),
            )
        report(
            f"{run}/predictions.jsonl",
            (before / run / "predictions.jsonl").read_bytes() == (after / run / "predictions.jsonl").read_bytes(),
        )
        for weights in sorted((before / run).glob("*.safetensors")):
            report(f"{run}/{weights.name}", sha256(weights) == sha256(after / run / weights.name))
        report(
            f"{run}.eval.json",
            figures(json.loads((before / f"{run}.eval.json").read_text()))
            == figures(json.loads((after / f"{run}.eval.json").read_text())),
        )
        report(
            f"{run}.eval.predictions.jsonl",
            (before / f"{run}.eval.predictions.jsonl").read_bytes()
            == (after / f"{run}.eval.predictions.jsonl").read_bytes(),
        )
        old, new = log_lines(before / f"{run}.log"), log_lines(after / f"{run}.log")
        report(f"{run}.log (timings aside)", old == new)
        if old != new:
            print("\n".join(list(difflib.unified_diff(old, new, lineterm=""))[:20]))
    return same_everywhere


if __name__ == "__main__":
    print("ALL SAME" if compare(Path(sys.argv[1]), Path(sys.argv[2])) else "SOME DIFFER")
