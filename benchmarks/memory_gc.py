"""Peak memory and step time with and without `training.gradient_checkpointing`, on the settings of the runs in
docs/benchmarks.md that peaked highest:

- qa:   MiniLM extractive QA, full fine-tuning, SQuADShifts New Wikipedia, batch 32 windows of up to 384 tokens
        (benchmarks/qa_squadshifts.sh full: 10.9 GB peak RSS over its whole run);
- xsum: SmolLM2-135M-Instruct LoRA r16 on XSum articles cut to 320 tokens, batch 8, chat template
        (benchmarks/decoder_smollm2.sh xsum lora: 16.5 GB over its whole run, evaluation included).

Each configuration trains `--steps` optimizer steps (no evaluation, no test split) in its own process, without and
with checkpointing, in turns for `--rounds` rounds. Peak memory is the process's peak RSS (`metrics.json`
train.peak_memory_mb, which is getrusage's ru_maxrss); step time is train.training_s / steps.

Usage: python benchmarks/memory_gc.py [qa] [xsum] [--steps 12] [--rounds 1] [--work runs/bench-memory]
       [--checkpointing both|on|off] [--checkout PATH (another checkout's llmtune, to compare two versions)]
       [--release-memory (training.release_freed_memory: true)]
Reads ../shared/data (benchmark data; the package never refers to it). Run it alone: it measures speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
QUIET = [
    "data.validation=null",
    "data.test=null",
    "evaluation.every_n_steps=null",
    "evaluation.metric_for_best=null",
    "checkpointing.at_epoch_end=false",
]


def settings(name: str) -> tuple[Path, list[str]]:
    if name == "qa":
        return ROOT / "recipes" / "qa.yaml", [
            f"data.train={SHARED / 'squadshifts' / 'new_wiki_v1.0.json'}",
            "training.warmup_ratio=0.1", "training.batch_size=32", "training.max_length=384", "task.doc_stride=128",
            "training.learning_rate=3e-4",
        ]  # fmt: skip
    xsum = SHARED / "xsum" / "test.jsonl"
    return ROOT / "recipes" / "summarization-gpt.yaml", [
        "task.chat_template=true", "task.num_beams=1", "data.columns={document: source, summary: target}",
        "data.drop_empty=true", "task.max_source_length=320", f"data.train={{path: {xsum}, max_samples: 800}}",
        "training.batch_size=8", "training.learning_rate=3e-4", "training.warmup_ratio=0.05",
    ]  # fmt: skip


def train(name: str, checkpointing: bool, steps: int, output: Path, checkout: Path | None = None, extra=()) -> dict:
    recipe, overrides = settings(name)
    flag = f"training.gradient_checkpointing={str(checkpointing).lower()}"
    overrides += [*QUIET, f"training.max_steps={steps}", flag, *extra]
    command = [sys.executable, "-m", "llmtune", "train", str(recipe), "--output", str(output.resolve()), "--overwrite"]
    command += [arg for item in overrides for arg in ("--set", item)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": str(checkout)} if checkout else {})}
    # From the checkout's folder: `python -m` puts the working directory ahead of PYTHONPATH.
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, cwd=checkout)
    summary = json.loads((output / "metrics.json").read_text())["train"]
    return {
        "peak_rss_mb": summary["peak_memory_mb"],
        "step_s": summary["training_s"] / summary["steps"],
        "tokens_per_s": summary["tokens_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["qa", "xsum"], choices=["qa", "xsum"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-memory"))
    parser.add_argument("--checkpointing", choices=["both", "on", "off"], default="both")
    parser.add_argument("--checkout", type=Path, help="run the llmtune of this checkout (e.g. a git worktree)")
    parser.add_argument("--release-memory", action="store_true", help="with training.release_freed_memory: true")
    args = parser.parse_args()
    extra = ["training.release_freed_memory=true"] if args.release_memory else []
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    results: dict = {}
    for round_ in range(args.rounds):
        for name in args.names:
            for checkpointing in settings if round_ % 2 == 0 else settings[::-1]:
                key = f"{name} {'with' if checkpointing else 'without'} checkpointing"
                output = args.work / key.replace(" ", "-")
                measured = train(name, checkpointing, args.steps, output, args.checkout, extra)
                results.setdefault(key, []).append(measured)
                print(key, measured, flush=True)
    print("\n| run | peak RSS MB | step s | non-pad tokens/s |\n|---|---:|---:|---:|")
    for key, rows in results.items():
        cells = [statistics.median(row[field] for row in rows) for field in ("peak_rss_mb", "step_s", "tokens_per_s")]
        print(f"| {key} | {cells[0]:,.0f} | {cells[1]:.2f} | {cells[2]:,.0f} |")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
