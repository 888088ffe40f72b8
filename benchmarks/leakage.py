"""Leakage audit on the shared data sets: duplicated rows between splits, and how long the audit takes.

    OMP_NUM_THREADS=1 python benchmarks/leakage.py [--data ../shared/data]

What is compared comes from each task's `leakage_fields`, as in `llmtune validate`: SST-2 sentences
(classification), SQuADShifts (as train) against XQuAD (as test) with contexts and questions apart (extractive QA),
Multi30k German sources (translation de -> en, as recipes/translation.yaml), GoEmotions comments and STS-B sentence
pairs joined (through the classification task's text and text pair: what the default contract gives a task whose
inputs are those columns).
Prints one Markdown row per pair of splits: rows compared, exact and near duplicates (of the later split), seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from llmtune import tasks
from llmtune.data import leakage
from llmtune.data.reading import in_memory


def sst2(data: Path) -> dict:
    def read(name):
        with open(data / "sst2" / f"{name}.tsv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        return in_memory({"sentence": [r["sentence"] for r in rows], "label": [r["label"] for r in rows]})

    return {"train": read("train"), "validation": read("validation")}


def squad_rows(path: Path):
    questions, contexts = [], []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append(qa["question"])
                contexts.append(paragraph["context"])
    return in_memory({"question": questions, "context": contexts})


def qa(data: Path) -> dict:
    return {
        "train": squad_rows(data / "squadshifts" / "new_wiki_v1.0.json"),
        "test": squad_rows(data / "xquad" / "xquad.en.json"),
    }


def multi30k(data: Path) -> dict:
    names = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
    read = lambda name, lang: (data / "multi30k" / f"{name}.{lang}").read_text(encoding="utf-8").splitlines()  # noqa
    return {split: in_memory({"en": read(name, "en"), "de": read(name, "de")}) for split, name in names.items()}


def jsonl_splits(folder: Path, columns: list[str]) -> dict:
    splits = {}
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        splits[split] = in_memory({column: [row[column] for row in rows] for column in columns})
    return splits


DATASETS = {
    "SST-2": (sst2, {"type": "classification", "text_column": "sentence"}),
    "SQuADShifts vs XQuAD": (qa, {"type": "question_answering"}),
    "Multi30k de-en": (multi30k, {"type": "translation", "source_lang": "de", "target_lang": "en"}),
    "GoEmotions": (lambda d: jsonl_splits(d / "goemotions", ["text"]), {"type": "classification"}),
    "STS-B": (
        lambda d: jsonl_splits(d / "stsb", ["sentence1", "sentence2"]),
        {"type": "classification", "text_column": "sentence1", "text_pair_column": "sentence2"},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    print("| data | pair | rows compared | exact | near | by field | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, (read, options) in DATASETS.items():
        splits = read(args.data)
        task = tasks.TASKS[options["type"]]
        task = task.create(task.options_class(**options))
        groups = task.leakage_fields(next(iter(splits.values())).column_names)
        started = time.perf_counter()
        results = leakage.audit(splits, groups)
        seconds = time.perf_counter() - started
        for pair_name, pair in results.items():
            entry = pair.as_dict()
            fields = "; ".join(f"{f}: {c['exact']} exact, {c['near']} near" for f, c in entry.get("fields", {}).items())
            compared = " vs ".join(f"{n:,}" for n in entry["compared"])
            print(
                f"| {name} | {pair_name} | {compared} | {entry['exact']} | {entry['near']} | {fields or '-'} "
                f"| {seconds:.1f} (all pairs) |"
            )
        for pair_name, pair in results.items():
            for match in pair.examples[:2]:
                print(f"<!-- {name} {pair_name} {match.kind} {match.similarity:.2f}: {match.later_text[:90]!r} ~ "
                      f"{match.earlier_text[:90]!r} -->")  # fmt: skip


if __name__ == "__main__":
    main()
