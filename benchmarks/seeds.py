"""Seed study: one recipe trained at several seeds, each metric's mean, standard deviation, minimum and maximum.

A single seed on a small data set is a lottery ticket (issue #34: one QA setting gave F1 13 to 36 by seed alone),
so comparisons of settings or of code versions need the spread. Each seed trains in its own process (as a user's
run does) into WORK/seed-S; a seed whose run already finished is reused, so a study can be extended or resumed.

    python benchmarks/seeds.py recipes/sentiment.yaml --seeds 1 2 3 4 5 --work runs/seeds-sst2 \\
        --set data.train=../shared/data/sst2/train.tsv ...

Writes WORK/seeds.json (every run's metrics and the summary) and WORK/seeds.md (the table), and prints the table.
`--eval-data FILE` also scores each run on FILE with `llmtune eval` (e.g. XQuAD for QA trained on SQuADShifts)
and reports it as the split `data`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("validation", "test", "data")
# Bookkeeping figures of metrics.json that are not results.
NOT_RESULTS = {"num_examples", "num_labelled_tokens", "num_target_tokens", "runtime_s", "samples_per_s", "steps"}
NOT_RESULTS |= {"epochs", "examples"}


def run_seed(recipe: Path, seed: int, work: Path, overrides: list[str], eval_data: str | None) -> dict:
    """metrics.json of the run at this seed (trained now unless it finished before), with `data` from --eval-data."""
    run_dir = work / f"seed-{seed}"
    if not (run_dir / "metrics.json").is_file():
        sets = [item for override in overrides for item in ("--set", override)]
        command = [sys.executable, "-m", "llmtune", "train", str(recipe), *sets, "--set", f"training.seed={seed}"]
        subprocess.run([*command, "--output", str(run_dir), "--overwrite"], check=True, cwd=ROOT)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scored = work / f"seed-{seed}-data.json"  # beside the run: a run directory holds only what training wrote
    if eval_data and not scored.is_file():
        command = [sys.executable, "-m", "llmtune", "eval", str(run_dir), "--data", eval_data, "--output", str(scored)]
        subprocess.run(command, check=True, cwd=ROOT)
    if eval_data:
        metrics["data"] = json.loads(scored.read_text())
    return metrics


def summarise(per_seed: dict[int, dict]) -> dict[str, dict]:
    """{split.metric: {mean, std, min, max, n}} over the seeds (std with n - 1: a sample of seeds)."""
    names = sorted(
        {
            f"{split}.{name}"
            for metrics in per_seed.values()
            for split in SPLITS
            for name, value in (metrics.get(split) or {}).items()
            if isinstance(value, (int, float)) and name not in NOT_RESULTS
        }
    )
    table = {}
    for name in names:
        split, metric = name.split(".", 1)
        values = [(m.get(split) or {}).get(metric) for m in per_seed.values()]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[name] = {"mean": statistics.fmean(values), "std": spread, "min": min(values), "max": max(values)}
            table[name]["n"] = len(values)
    return table


def markdown(per_seed: dict[int, dict], table: dict[str, dict]) -> str:
    seeds = list(per_seed)
    head = "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | min | max |\n"
    head += "|---" * (len(seeds) + 5) + "|\n"
    rows = []
    for name, figures in table.items():
        split, metric = name.split(".", 1)
        values = [per_seed[s].get(split, {}).get(metric) for s in seeds]
        cells = [f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in values]
        stats = [f"{figures[k]:.4f}" for k in ("mean", "std", "min", "max")]
        rows.append(f"| {name} | " + " | ".join(cells + stats) + " |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs (WORK/seed-S) and the table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (repeatable)")
    parser.add_argument("--eval-data", help="also score each run on this data file (reported as split `data`)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: each seed once, got {args.seeds}")
    args.work.mkdir(parents=True, exist_ok=True)
    per_seed = {seed: run_seed(args.recipe, seed, args.work, args.overrides, args.eval_data) for seed in args.seeds}
    table = summarise(per_seed)
    (args.work / "seeds.json").write_text(json.dumps({"runs": per_seed, "summary": table}, indent=2) + "\n")
    text = markdown(per_seed, table)
    (args.work / "seeds.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
