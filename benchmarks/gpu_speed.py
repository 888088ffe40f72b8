"""GPU speed benchmark whose figures can be trusted: llmtune against transformers.Trainer (and TRL) per workload,
each configuration in its own process, in rotated rounds, warmup apart from the steady state.

    python benchmarks/gpu_speed.py --out gpu-speed                           # one H200: about 6 minutes
    python benchmarks/gpu_speed.py --out /tmp/speed --device cpu --quick     # the same code, tiny shapes (a test)

Workloads (random weights, made-up data: nothing is downloaded; figures say how fast, not how good):

- bert-sst2: a BERT-base classifier on made-up sentences of SST-2's lengths (gpu_check's `speed_rows`):
  llmtune's shipped defaults (batch 32, max_length 128), llmtune with a GPU-sized token budget and
  torch.compile, and the Trainer with group_by_length and dynamic padding (batch 32).
- llama1b-lora: Llama-3.2-1B's shape (16 layers, 2048 wide, GQA 32/8 heads, 8192 MLP, 128,256 vocabulary),
  prompt -> completion (loss on the completion), LoRA r16 on all 7 projections, batch 16 x <= 256 tokens: llmtune
  against Trainer + peft (and TRL's SFTTrainer when `trl` is installed).
- llama1b-qlora: the same on a 4-bit NF4 base (bitsandbytes; skipped without it).
- llama1b-full: full fine-tuning of the same model, bf16 mixed precision with float32 weights on both sides.

Timing: the harness (never llmtune) wraps each side's optimizer step: llmtune's `training.train_step` and the
Trainer's step callbacks, with `torch.cuda.synchronize()` around each, so every step has its own time and its
own batch (examples, non-pad tokens). The first `--warmup-steps` steps (compile, autotuning, allocator growth)
are reported apart from the steady state: its median step time with the min-max range, and samples/s and
tokens/s over the steady steps. `setup_s` is the process's time before the first step (imports, model load,
tokenization). MFU = model FLOPs (llmtune.engine.speed: 4 x all + 2 x trained non-embedding parameters per token,
counted on the meta device so that 4-bit packing does not hide weights) per second over the GPU's nominal dense
bf16 peak and over the bf16 matmul peak measured in the same process. Peak GPU memory: max_memory_allocated.

Each configuration runs in its own process; `--rounds` (at least 2) rounds run every configuration, the order
rotated by one each round, so a slow phase of the machine falls on all of them. The report gives medians with
min-max over the rounds and llmtune / peer ratios taken round by round. OUT/results.json and OUT/results.md are
rewritten after every run, so a run cut short still reports what it did; `--budget-s` skips runs that would not
finish in time (judged by the slowest earlier run of the same configuration, or a guess).

On the lent GPU machine, the wheels its image lacks come from `python benchmarks/gpu_wheels.py --speed DIR`
(see docs/benchmarks.md, "GPU speed benchmark").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import NOMINAL_BF16_PEAK, bert_model, bpe_tokenizer, sentence, speed_rows, write_jsonl  # noqa: E402
from peers_sst2 import spread  # noqa: E402

WORKLOADS = {
    "bert-sst2": ["llmtune-defaults", "llmtune-budget", "trainer"],
    "llama1b-lora": ["llmtune", "trainer-peft", "trl-sft"],
    "llama1b-qlora": ["llmtune", "trainer-peft"],
    "llama1b-full": ["llmtune", "trainer"],
}
# Llama-3.2-1B (hidden, layers, heads, kv heads, intermediate, vocabulary); --quick: a tiny one of the same kind.
LLAMA_1B = (2048, 16, 32, 8, 8192, 128256)
LLAMA_QUICK = (64, 2, 4, 2, 128, 600)
BERT_BASE, BERT_QUICK = (768, 12, 12, 3072), (64, 2, 2, 128)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "Summarize:\n{source}\nSummary: {completion}"
GUESS_S = {"bert-sst2": 60, "llama1b-lora": 60, "llama1b-qlora": 75, "llama1b-full": 75}  # before any run


# ---------------------------------------------------------------------------------------------- inputs


def llama_checkpoint(folder: Path, shape: tuple, device: str) -> Path:
    """A Llama of `shape` with random weights, saved in bf16 as Llama-3.2-1B ships, built on the device (1.2B
    parameters initialise in seconds on a GPU, minutes on a CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    tokenizer = bpe_tokenizer(folder)
    hidden, layers, heads, kv_heads, intermediate, vocab = shape
    config = LlamaConfig(vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def completion_rows(count: int, quick: bool) -> list[dict]:
    """Made-up prompt -> completion pairs: sources of 20-90 words, summaries of 4-16 (<= 256 tokens in all)."""
    rng = random.Random(2)
    short, long = (3, 10) if quick else (20, 90)
    return [
        {"source": sentence(rng, rng.randint(short, long))[0], "target": sentence(rng, rng.randint(4, 16))[0]}
        for _ in range(count)
    ]


def prepare_inputs(work: Path, device: str, quick: bool) -> dict:
    """Models and data every child reads: built once, before the first round."""
    work.mkdir(parents=True, exist_ok=True)
    bert = bert_model(work / "bert", *(BERT_QUICK if quick else BERT_BASE))
    llama = llama_checkpoint(work / "llama", LLAMA_QUICK if quick else LLAMA_1B, device)
    sentences = write_jsonl(work / "sst2-like.jsonl", speed_rows(600 if quick else 8000))
    pairs = write_jsonl(work / "completions.jsonl", completion_rows(200 if quick else 2000, quick))
    return {"bert": str(bert), "llama": str(llama), "sentences": str(sentences), "pairs": str(pairs)}


# ---------------------------------------------------------------------------------------------- children


class StepClock:
    """Per-step seconds and batch sizes, taken by the harness around each optimizer step."""

    def __init__(self, device: str):
        self.device, self.seconds, self.samples, self.tokens, self.padded = device, [], [], [], []
        self.first_step_at: float | None = None
        self._started = 0.0

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def begin(self) -> None:
        self.sync()
        self._started = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = self._started

    def end(self, batch: dict) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self._started)
        samples, tokens = batch_counts(batch)
        self.samples.append(samples)
        self.tokens.append(tokens)
        self.padded.append(int(batch["input_ids"].numel()))


def batch_counts(batch: dict) -> tuple[int, int]:
    """(examples, non-pad tokens) of a batch: padded rows with an attention mask, or padding-free rows (one row of
    sequences laid end to end, each starting at position 0)."""
    if batch.get("attention_mask") is not None:
        return int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum())
    if batch.get("position_ids") is not None:
        return int((batch["position_ids"] == 0).sum()), int(batch["input_ids"].numel())
    return int(batch["input_ids"].shape[0]), int(batch["input_ids"].numel())


def llmtune_recipe(workload: str, config: str, inputs: dict, work: Path, device: str, steps: int):
    from llmtune.recipe import validate

    training = {"max_steps": steps, "log_every_n_steps": 1000, "learning_rate": 1e-4, "seed": 0,
                "precision": "bf16" if device == "cuda" else "fp32"}  # fmt: skip
    if workload == "bert-sst2":
        task, data = {"type": "classification"}, inputs["sentences"]
        model, method = inputs["bert"], {"type": "full"}
        if config == "llmtune-budget":  # 32 x 128 tokens x 4: the GPU's sweet spot for BERT-base, short sentences
            training |= {"max_tokens": 256 if device == "cpu" else 16384, "compile": device == "cuda"}
    else:
        task = {"type": "summarization", "generative": True, "source_column": "source", "target_column": "target",
                "prompt_template": PROMPT, "max_source_length": 224, "max_target_length": 32}  # fmt: skip
        data, model = inputs["pairs"], inputs["llama"]
        method = {"type": "full"}
        if workload != "llama1b-full":
            method = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": LORA_TARGETS}
            method |= {"quantization": "4bit"} if workload == "llama1b-qlora" else {}
        training |= {"batch_size": 16, "max_length": 256}
    return validate({"model": {"name": model}, "task": task, "data": {"train": data}, "method": method,
                     "training": training, "checkpointing": {"at_epoch_end": False},
                     "output_dir": str(work / "run")})  # fmt: skip


def run_llmtune(workload: str, config: str, inputs: dict, work: Path, device: str, steps: int) -> dict:
    from llmtune.engine import training

    clock = StepClock(device)
    step = training.train_step

    def timed_step(run, batch):  # the harness's clock around llmtune's step, not inside llmtune
        clock.begin()
        result = step(run, batch)
        clock.end(batch)
        return result

    training.train_step = timed_step
    recipe = llmtune_recipe(workload, config, inputs, work, device, steps)
    training.train(recipe, overwrite=True)
    return {"clock": clock, "batches": describe_batches(recipe.training)}


def describe_batches(cfg) -> str:
    size = f"token budget {cfg.max_tokens}" if cfg.max_tokens else f"batch {cfg.batch_size}"
    return f"{size}, max_length {cfg.max_length}, compile {cfg.compile}, precision {cfg.precision}"


def encoded_completions(tokenizer, path: str) -> list[dict]:
    """Prompt + completion token ids, the prompt masked out of the labels: what llmtune's generative tasks train."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    encoded = []
    for row in rows:
        prompt = tokenizer(PROMPT.split("{completion}")[0].format(source=row["source"]))["input_ids"][:224]
        completion = tokenizer(" " + row["target"])["input_ids"][:31] + [tokenizer.eos_token_id]
        ids = (prompt + completion)[:256]
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                        "labels": ([-100] * len(prompt) + completion)[:256]})  # fmt: skip
    return encoded


def peer_model(workload: str, inputs: dict, device: str):
    """The peer's model as its documentation sets it up: a bf16 base under LoRA (4-bit NF4 under QLoRA, through
    peft's k-bit preparation), float32 weights under bf16 autocast for full fine-tuning (as llmtune trains)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    if workload == "bert-sst2":
        return AutoModelForSequenceClassification.from_pretrained(inputs["bert"], num_labels=2)
    options = {"dtype": torch.float32 if workload == "llama1b-full" or device == "cpu" else torch.bfloat16}
    if workload == "llama1b-qlora":
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(inputs["llama"], **options)
    if workload == "llama1b-full":
        return model
    import peft

    if workload == "llama1b-qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def run_trainer(workload: str, inputs: dict, work: Path, device: str, steps: int) -> dict:
    """transformers.Trainer set up for speed: bf16, group_by_length, dynamic padding."""
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,  # fmt: skip
    )

    source = inputs["bert"] if workload == "bert-sst2" else inputs["llama"]
    tokenizer = AutoTokenizer.from_pretrained(source)
    if workload == "bert-sst2":
        rows = [json.loads(line) for line in Path(inputs["sentences"]).read_text().splitlines()]
        train_set = [{**tokenizer(r["text"], truncation=True, max_length=128), "labels": r["label"]} for r in rows]
        collator, batch = DataCollatorWithPadding(tokenizer), 32
    else:
        train_set, batch = encoded_completions(tokenizer, inputs["pairs"]), 16
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    clock = StepClock(device)
    batches: list[dict] = []

    def counting(features):  # the batches in the order the steps take them (Accelerate fetches one ahead)
        made = collator(features)
        batches.append({"input_ids": made["input_ids"], "attention_mask": made["attention_mask"]})
        return made

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.begin()

        def on_step_end(self, *args, **kwargs):
            clock.end(batches[len(clock.seconds)])

    trainer = Trainer(model=peer_model(workload, inputs, device), args=trainer_args(work, device, batch, steps),
                      train_dataset=train_set, data_collator=counting, callbacks=[Clock()])  # fmt: skip
    trainer.train()
    return {"clock": clock, "model": trainer.model, "batches": f"batch {batch}, group_by_length, dynamic padding"}


def trainer_args(work: Path, device: str, batch: int, steps: int):
    import inspect

    from transformers import TrainingArguments

    # transformers 5 renamed group_by_length into a sampling strategy: take whichever this version has
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    grouping = {"group_by_length": True} if "group_by_length" in accepted else {
        "train_sampling_strategy": "group_by_length"}  # fmt: skip
    return TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
        bf16=device == "cuda", report_to=[], save_strategy="no", logging_strategy="no", use_cpu=device == "cpu",
        seed=0, disable_tqdm=True, **grouping)  # fmt: skip


def run_trl(workload: str, inputs: dict, work: Path, device: str, steps: int) -> dict:
    """TRL's SFTTrainer on the same prompt -> completion pairs (loss on completions), padding-free batches."""
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    rows = [json.loads(line) for line in Path(inputs["pairs"]).read_text().splitlines()]
    data = Dataset.from_list([{"prompt": PROMPT.split("{completion}")[0].format(source=r["source"]),
                               "completion": " " + r["target"]} for r in rows])  # fmt: skip
    clock = StepClock(device)
    trainer_box: list = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.begin()

        def on_step_end(self, *args, **kwargs):
            clock.end(trainer_box[0].last_batch)

    config = trl.SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=16, max_steps=steps,
                           max_length=256, learning_rate=1e-4, bf16=device == "cuda", report_to=[],
                           save_strategy="no", logging_strategy="no", use_cpu=device == "cpu", seed=0,
                           padding_free=device == "cuda", disable_tqdm=True)  # fmt: skip
    trainer = trl.SFTTrainer(model=peer_model(workload, inputs, device), args=config, train_dataset=data,
                             callbacks=[Clock()])  # fmt: skip
    original = trainer.training_step

    def remembering(model, batch, *args, **kwargs):
        trainer.last_batch = {key: batch.get(key) for key in ("input_ids", "attention_mask", "position_ids")}
        return original(model, batch, *args, **kwargs)

    trainer.training_step, trainer_box[:] = remembering, [trainer]
    trainer.train()
    batches = "batch 16, padding-free" if device == "cuda" else "batch 16, padded"
    return {"clock": clock, "model": trainer.model, "batches": batches}


def model_flops_per_token(workload: str, inputs: dict) -> float:
    """Training FLOPs per token (llmtune.engine.speed) of the workload's model, built on the meta device: a 4-bit base
    packs two weights in one element, which would halve its count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmtune.engine import speed

    path = inputs["bert" if workload == "bert-sst2" else "llama"]
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        if workload == "bert-sst2":
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    if workload in ("llama1b-lora", "llama1b-qlora"):
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    return speed.flops_per_token(model)[0]


def child(workload: str, config: str, inputs: dict, work: Path, device: str, steps: int) -> dict:
    import torch

    from llmtune.engine import speed

    if config.startswith("llmtune"):
        ran = run_llmtune(workload, config, inputs, work, device, steps)
    elif config == "trl-sft":
        ran = run_trl(workload, inputs, work, device, steps)
    else:
        ran = run_trainer(workload, inputs, work, device, steps)
    clock = ran["clock"]
    on_gpu = device == "cuda"
    return {
        "setup_s": round((clock.first_step_at or time.perf_counter()) - STARTED, 2),
        "step_s": [round(s, 5) for s in clock.seconds],
        "samples": clock.samples,
        "tokens": clock.tokens,
        "padded_tokens": clock.padded,
        "batches": ran["batches"],
        "flops_per_token": model_flops_per_token(workload, inputs),
        "measured_peak_flops": speed.matmul_peak_flops(torch.device(device)),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None,
    }


# ---------------------------------------------------------------------------------------------- parent


def summarize(raw: dict, warmup_steps: int, nominal: float | None) -> dict:
    """One run's figures: warmup apart, steady state as the median step and throughput over the steady steps."""
    seconds, steady = raw["step_s"], slice(warmup_steps, None)
    steady_s = sum(seconds[steady]) or float("nan")
    tokens_per_s = sum(raw["tokens"][steady]) / steady_s
    model_flops = raw["flops_per_token"] * tokens_per_s
    return {
        "setup_s": raw["setup_s"],
        "warmup_s": round(sum(seconds[:warmup_steps]), 3),
        "warmup_steps": min(warmup_steps, len(seconds)),
        "steady_steps": len(seconds[steady]),
        "steady_step_s": round(statistics.median(seconds[steady]), 5) if seconds[steady] else None,
        "samples_per_s": round(sum(raw["samples"][steady]) / steady_s, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "padding_share": round(1 - sum(raw["tokens"][steady]) / max(1, sum(raw["padded_tokens"][steady])), 4),
        "mfu_measured_peak": round(model_flops / raw["measured_peak_flops"], 4),
        "mfu_nominal_peak": round(model_flops / nominal, 4) if nominal else None,
        "peak_gpu_memory_mb": raw["peak_gpu_memory_mb"],
        "measured_peak_tflops": round(raw["measured_peak_flops"] / 1e12, 3),
        "batches": raw["batches"],
    }


def nominal_peak(device: str) -> tuple[float | None, str]:
    import torch

    if device != "cuda":
        return None, "CPU: no nominal bf16 peak"
    name = torch.cuda.get_device_name()
    flops = next((value for key, value in NOMINAL_BF16_PEAK.items() if key in name), None)
    return flops, f"{name}: nominal dense bf16 {flops / 1e12:.0f} TFLOP/s" if flops else f"{name}: nominal unknown"


def plan(workloads: list[str], configs: list[str] | None) -> list[tuple[str, str]]:
    runs = [(w, c) for w in workloads for c in WORKLOADS[w] if not configs or c in configs]
    return [(w, c) for w, c in runs if not unavailable(w, c)] + [(w, c) for w, c in runs if unavailable(w, c)]


def unavailable(workload: str, config: str) -> str | None:
    """Why a configuration cannot run on this machine (recorded as skipped), or None."""
    if config == "trl-sft" and importlib.util.find_spec("trl") is None:
        return "trl is not installed"
    if workload == "llama1b-qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def rotated(runs: list, round_: int) -> list:
    shift = round_ % len(runs) if runs else 0
    return runs[shift:] + runs[:shift]


def spawn(workload: str, config: str, args, inputs_file: Path, work: Path, limit_s: float) -> dict:
    command = [sys.executable, __file__, "--child", workload, config, "--inputs", str(inputs_file), "--work",
               str(work), "--device", args.device, "--steps", str(args.steps)]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "FAILED", "error": f"timed out after {limit_s:.0f} s"}
    wall = round(time.perf_counter() - started, 1)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not found:
        return {"status": "FAILED", "wall_s": wall, "error": done.stderr[-1500:]}
    return {"status": "ok", "wall_s": wall, "raw": json.loads(found[-1].removeprefix("RESULT "))}


def aggregate(results: dict, rounds: int) -> dict:
    """Per workload and configuration: medians [min-max] over the rounds; ratios llmtune / peer round by round."""
    table = {}
    for workload, configs in results.items():
        ours = next((c for c in configs if c.startswith("llmtune")), None)
        for config, runs in configs.items():
            done = [r for r in runs if r["status"] == "ok"]
            row = {"runs": len(runs), "ok": len(done)}
            for key in ("setup_s", "warmup_s", "steady_step_s", "samples_per_s", "tokens_per_s", "padding_share",
                        "mfu_nominal_peak", "mfu_measured_peak", "peak_gpu_memory_mb"):  # fmt: skip
                values = [r["figures"][key] for r in done if r["figures"][key] is not None]
                middle = statistics.median(values) if values else None
                row[key] = {"median": middle, "min": min(values), "max": max(values)} if values else None
            if ours and not config.startswith("llmtune"):
                pairs = [(o, p) for o, p in zip(configs[ours], runs) if o["status"] == p["status"] == "ok"]
                ratios = [o["figures"]["samples_per_s"] / p["figures"]["samples_per_s"] for o, p in pairs]
                row["llmtune_over_peer_samples_per_s"] = ratios
            table.setdefault(workload, {})[config] = row
    return table


def markdown(report: dict) -> str:
    lines = [f"# GPU speed: {report['device']}", "", f"{report['peak_note']}; torch {report['torch']}, "
             f"transformers {report['transformers']}; {report['rounds']} rounds, orders: "
             + "; ".join(" ".join(f"{w}/{c}" for w, c in order) for order in report["orders"])
             + f"; {report['seconds']:.0f} s in all. Medians [min-max] over rounds; warmup = the first "
             f"{report['warmup_steps']} steps; ratios are llmtune's samples/s over the peer's, round by round.", "",
             "| workload | configuration | ok | setup s | warmup s | steady step s | samples/s | tokens/s "
             "| padding | MFU nominal | MFU measured | peak GPU MB | llmtune / peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for workload, configs in report["table"].items():
        for config, row in configs.items():

            def cell(key, digits=2, scale=1.0, row=row):
                value = row.get(key)
                return spread([scale * value[k] for k in ("median", "min", "max")], digits) if value else "-"

            ratios = row.get("llmtune_over_peer_samples_per_s")
            ratio = spread(ratios, 2) + "x" if ratios else ""
            lines.append(
                f"| {workload} | {config} | {row['ok']}/{row['runs']} | {cell('setup_s', 1)} | {cell('warmup_s')} "
                f"| {cell('steady_step_s', 4)} | {cell('samples_per_s', 1)} | {cell('tokens_per_s', 0)} "
                f"| {cell('padding_share', 0, 100)}% "
                f"| {cell('mfu_nominal_peak', 1, 100)} | {cell('mfu_measured_peak', 1, 100)} "
                f"| {cell('peak_gpu_memory_mb', 0)} | {ratio} |"
            )
    skipped = [f"{w}/{c}: {r['reason']}" for w, cs in report["results"].items() for c, rs in cs.items()
               for r in rs if r["status"] == "skipped"]  # fmt: skip
    failed = [f"{w}/{c}: {r['error'][-300:]}" for w, cs in report["results"].items() for c, rs in cs.items()
              for r in rs if r["status"] == "FAILED"]  # fmt: skip
    lines += ["", *(f"- skipped {line}" for line in dict.fromkeys(skipped)), *(f"- FAILED {line}" for line in failed)]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    report["table"] = aggregate(report["results"], report["rounds"])
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))


def main_parent(args) -> int:
    import torch
    import transformers

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-speed-"))
    inputs = prepare_inputs(work / "inputs", args.device, args.quick)
    inputs_file = work / "inputs.json"
    inputs_file.write_text(json.dumps(inputs))
    nominal, peak_note = nominal_peak(args.device)
    runs = plan(args.workloads, args.configs)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU", "peak_note": peak_note,
              "nominal_peak_flops": nominal, "torch": torch.__version__, "transformers": transformers.__version__,
              "rounds": args.rounds, "steps": args.steps, "warmup_steps": args.warmup_steps, "orders": [],
              "seconds": 0.0, "results": {w: {c: [] for ww, c in runs if ww == w} for w in args.workloads}}  # fmt: skip
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the 1B model was built here; the children need the memory
    for round_ in range(args.rounds):
        order = rotated([run for run in runs if not unavailable(*run)], round_)
        report["orders"].append(order)
        for workload, config in order + [run for run in runs if unavailable(*run)]:
            report["results"][workload][config].append(run_or_skip(workload, config, args, inputs_file, work, report))
            report["seconds"] = round(time.perf_counter() - STARTED, 1)
            write_report(args.out, report)
    shutil.rmtree(work, ignore_errors=True)  # the 1B checkpoint alone is 2.5 GB
    print(markdown(report))
    return 0 if not any(r["status"] == "FAILED" for cs in report["results"].values() for rs in cs.values()
                        for r in rs) else 1  # fmt: skip


def run_or_skip(workload: str, config: str, args, inputs_file: Path, work: Path, report: dict) -> dict:
    reason = unavailable(workload, config)
    if reason:
        return {"status": "skipped", "reason": reason}
    earlier = [r["wall_s"] for r in report["results"][workload][config] if "wall_s" in r]
    expected = max(earlier) if earlier else (10 if args.quick else GUESS_S[workload])
    left = args.budget_s - (time.perf_counter() - STARTED)
    if expected > left:
        return {"status": "skipped", "reason": f"expected {expected:.0f} s, {max(left, 0):.0f} s of the budget left"}
    print(f"{workload} / {config}: running", flush=True)
    result = spawn(workload, config, args, inputs_file, work / f"{workload}-{config}", max(left, expected) + 60)
    if result["status"] == "ok":
        raw = result.pop("raw")
        result["figures"] = summarize(raw, args.warmup_steps, report["nominal_peak_flops"])
        result["per_step"] = {key: raw[key] for key in ("samples", "tokens", "padded_tokens")}
        result["per_step"]["seconds"] = raw["step_s"]
    print(f"{workload} / {config}: {result['status']} {result.get('figures', result.get('error', ''))}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps: the same code on a CPU")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of every configuration, order rotated (>= 2; 1 for a --quick smoke run)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 40; --quick 4)")
    parser.add_argument("--warmup-steps", type=int, help="first steps reported as warmup (default 5; --quick 1)")
    parser.add_argument("--budget-s", type=float, default=400, help="skip runs that would end after this many s")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--configs", nargs="+", help="run only these configurations of each workload")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.quick else 40)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 5)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        if importlib.util.find_spec("matplotlib") is None:
            import llmtune.reports.plots

            llmtune.reports.plots.save_plots = lambda run_dir: None  # plots are for people, not part of the timing
        raw = child(*args.child, json.loads(args.inputs.read_text()), args.work, args.device, args.steps)
        print("RESULT " + json.dumps(raw), flush=True)
        return 0
    # One round measures nothing (no rotated order to compare): only a --quick smoke run, which checks that every
    # configuration runs, may have it.
    if args.out is None or args.rounds < (1 if args.quick else 2):
        parser.error("--out is required, and --rounds must be at least 2 (rotated orders; 1 only with --quick)")
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
