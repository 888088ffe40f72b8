"""GPU check: every task family on the accelerator, QLoRA with gradient checkpointing, a BERT-base speed race
against transformers.Trainer, and the tokens/s of generation-based evaluation. One command, no network:

    python benchmarks/gpu_check.py --out gpu-check            # on a GPU machine: at most ~8 minutes
    python benchmarks/gpu_check.py --out gpu-check --device cpu --quick    # the same code paths on a CPU, small

Writes OUT/gpu_check.json and OUT/gpu_check.md after every check, so a run cut short still reports what it did.
A check that fails is recorded with its error and the rest still run; one that cannot run here (bitsandbytes
missing, the time budget spent) is recorded as skipped with the reason, and the script prints both.

Everything is built here, from configs with random weights and tokenizers trained on a made-up corpus: no
model, tokenizer or dataset is downloaded, so the figures say nothing about quality, only that each path runs
and how fast. The checks:

- families: classification, NER and extractive QA on a BERT, translation on a BERT2BERT encoder-decoder and on
  a Llama-style decoder (prompt -> completion), and classification with LoRA on the decoder; each in bf16 for
  a few steps with a validation, a checkpoint, a save, a reload (`llmtune.evaluate` from the saved run equals
  the run's own metrics) and a resume (stopped after step 2, resumed to 4, against 4 straight: the last loss).
- qlora: LoRA on a 4-bit (NF4) decoder with gradient checkpointing; the adapter merged into a plain model.
- speed: a BERT-base-shaped encoder (110M) on 24,000 made-up sentences of SST-2-like lengths: llmtune (token
  budget batches, SDPA, torch.compile, bf16) against transformers.Trainer (bf16, group_by_length, batch 32);
  samples/s, non-pad tokens/s, MFU against the GPU's nominal dense bf16 peak, peak GPU memory.
- generation: a decoder of SmolLM2-135M's shape (its vocabulary cut to the made-up tokenizer's) evaluated on a
  generative task: generated tokens per second.
- fsdp: FSDP2 through Accelerate (`torchrun` with the variables `accelerate launch --use_fsdp --fsdp_version 2`
  sets, on every GPU of the machine): a BERT classifier and a Llama decoder with LoRA on a generative task, each
  trained sharded and data-parallel (the same final loss), and sharded again resumed from its step-2 checkpoint
  (the same again). With --device cpu, on two CPU processes through tests/fsdp_on_cpu.py.
- deepspeed: the same under DeepSpeed ZeRO-3 (`accelerate launch --use_deepspeed --zero_stage 3`'s variables);
  skipped when deepspeed is not installed. With --device cpu, through tests/deepspeed_on_cpu.py.

On a bare GPU machine that has torch and transformers but not the rest of llmtune's requirements (datasets,
pydantic, evaluate, seqeval, ...), install them first from wheels: `python benchmarks/gpu_wheels.py` builds the
folder of cp312 wheels to carry there (see its docstring). matplotlib is optional here: without it the runs skip
their PNG plots.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout that is not installed runs too

POSITIVE = "good great wonderful moving funny warm brilliant lovely superb charming clever fresh".split()
NEGATIVE = "bad dull boring awful tedious flat weak clumsy stale bland messy poor".split()
NEUTRAL = "the a film movie story plot actor scene it was is and but very too of with this that".split()
NAMES = "paul walker mary smith anna berg".split()
PLACES = "paris london berlin rome madrid vienna".split()
NOMINAL_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def deutsch(word: str) -> str:
    """The made-up 'German' of a word: the translation task's source."""
    return word[::-1] + "en"


# ---------------------------------------------------------------------------------------------- data and models


def sentence(rng: random.Random, length: int) -> tuple[str, int]:
    words = [rng.choice(POSITIVE + NEGATIVE + NEUTRAL) for _ in range(length)]
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return " ".join(words), int(score > 0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_data(folder: Path, rows: int) -> dict[str, dict[str, Path]]:
    """train/validation files of each family's task, made up with a fixed seed."""
    rng, files = random.Random(0), {}
    for split, count in (("train", rows), ("validation", max(8, rows // 4))):
        texts = [sentence(rng, rng.randint(4, 12)) for _ in range(count)]
        files.setdefault("classification", {})[split] = write_jsonl(
            folder / f"cls-{split}.jsonl", [{"text": t, "label": label} for t, label in texts]
        )
        ner = []
        for _ in range(count):
            first, last, place = rng.choice(NAMES), rng.choice(NAMES), rng.choice(PLACES)
            tokens = [first, last, "was", "in", place, "with", "a", "film"]
            ner.append({"tokens": tokens, "tags": ["B-person", "I-person", "O", "O", "B-location", "O", "O", "O"]})
        files.setdefault("ner", {})[split] = write_jsonl(folder / f"ner-{split}.jsonl", ner)
        qa = []
        for number in range(count):
            place, filler = rng.choice(PLACES), sentence(rng, 6)[0]
            context = f"{filler} . the treasure is in {place} . {sentence(rng, 5)[0]}"
            answer = {"text": [place], "answer_start": [context.index(f"in {place}") + 3]}
            qa.append({"id": f"{split}-{number}", "context": context, "question": "where is the treasure ?",
                       "answers": answer})  # fmt: skip
        files.setdefault("qa", {})[split] = write_jsonl(folder / f"qa-{split}.jsonl", qa)
        pairs = [sentence(rng, rng.randint(3, 8))[0] for _ in range(count)]
        files.setdefault("translation", {})[split] = write_jsonl(
            folder / f"mt-{split}.jsonl", [{"de": " ".join(map(deutsch, p.split())), "en": p} for p in pairs]
        )
    return files


def vocabulary() -> list[str]:
    words = POSITIVE + NEGATIVE + NEUTRAL + NAMES + PLACES + ["treasure", "where", "was", "in", "?", ".", ","]
    words += [deutsch(word) for word in POSITIVE + NEGATIVE + NEUTRAL]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return sorted(set(words)) + letters + [f"##{letter}" for letter in letters]


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocabulary()]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def bpe_tokenizer(folder: Path):
    """Byte-level BPE trained on the made-up corpus, with a pad token and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [" ".join(vocabulary()[i : i + 8]) for i in range(0, len(vocabulary()), 4)] * 4
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|pad|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def bert_model(folder: Path, hidden: int, layers: int, heads: int, intermediate: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    if (folder / "config.json").exists():
        return folder
    tokenizer = bert_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522 if hidden >= 768 else len(tokenizer), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=512)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def llama_model(folder: Path, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    tokenizer = bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- runs


def recipe(model: Path, task: dict, files: dict, out: Path, steps: int, ctx, method=None, **model_extra):
    from llmtune.recipe import validate

    return validate({
        "model": {"name": str(model), **model_extra},
        "task": task,
        "data": {"train": str(files["train"]), "validation": str(files["validation"])},
        "method": method or {"type": "full"},
        "training": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "precision": ctx.precision,
                     "max_length": 64, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"every_n_steps": 2},
        "checkpointing": {"every_n_steps": 2, "at_epoch_end": False},
        "output_dir": str(out),
    })  # fmt: skip


def last_loss(run_dir: Path) -> float:
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line][-1]


def train_save_reload_resume(name: str, make_recipe, work: Path) -> dict:
    """Train 4 steps; reload the saved run and evaluate it; the same run stopped after step 2 (its checkpoint)
    and resumed to 4 must end with the same loss."""
    from llmtune import evaluate, train

    straight = train(make_recipe(work / f"{name}-4", 4), overwrite=True)
    reloaded, _ = evaluate(straight.run_dir, split="validation")
    saved = straight.metrics["validation"]
    numeric = [k for k, v in saved.items() if isinstance(v, (int, float)) and not k.endswith("_s")]
    reload_gap = max((abs(reloaded[k] - saved[k]) for k in numeric if k in reloaded), default=0.0)
    stopped = make_recipe(work / f"{name}-resumed", 4)
    train(stopped, overwrite=True, on_validation=lambda step, metrics: step >= 2)
    resumed = train(stopped, resume=True)
    loss_gap = abs(last_loss(resumed.run_dir) - last_loss(straight.run_dir))
    return {
        "validation": {k: saved[k] for k in numeric},
        "reload_max_difference": round(reload_gap, 6),
        "resume_final_loss_difference": round(loss_gap, 6),
        "peak_gpu_memory_mb": straight.metrics["train"].get("peak_gpu_memory_mb"),
        # GPU bf16 kernels are not bit-reproducible; a resume that lost its optimizer state was 0.004-0.07 off
        "ok": reload_gap < 2e-2 and loss_gap < 1e-2,
    }


def check_families(ctx) -> dict:
    small = ctx.models / "bert-small"
    bert = bert_model(small, 64, 2, 2, 128)
    llama = llama_model(ctx.models / "llama-small", 64, 2, 4, 2, 128)
    files = ctx.files
    translation = {"type": "translation", "source_lang": "de", "target_lang": "en", "num_beams": 1,
                   "max_target_length": 16}  # fmt: skip
    families = {
        "classification/encoder": lambda out, n: recipe(bert, {"type": "classification"}, files["classification"],
                                                        out, n, ctx),
        "ner/encoder": lambda out, n: recipe(bert, {"type": "token_classification", "stride": 8}, files["ner"],
                                             out, n, ctx),
        "qa/encoder": lambda out, n: recipe(bert, {"type": "question_answering", "doc_stride": 16}, files["qa"],
                                            out, n, ctx),
        "translation/encoder-decoder": lambda out, n: recipe(bert, translation, files["translation"], out, n, ctx,
                                                             decoder=str(bert)),
        "translation/decoder": lambda out, n: recipe(llama, {**translation, "generative": True},
                                                     files["translation"], out, n, ctx),
        "classification/decoder+lora": lambda out, n: recipe(llama, {"type": "classification"},
                                                             files["classification"], out, n, ctx,
                                                             method={"type": "lora", "r": 8}),
    }  # fmt: skip
    results = {}
    for name, make in families.items():
        start = time.perf_counter()
        try:
            results[name] = train_save_reload_resume(name.replace("/", "-"), make, ctx.work)
        except Exception as exc:  # one family's failure must not hide the others'
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                             "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        ctx.say(f"  {name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']} s)")
    return {"ok": all(r["ok"] for r in results.values()), "families": results}


def check_qlora(ctx) -> dict:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skipped("bitsandbytes is not installed (pip install 'llmtune[qlora]')")
    from transformers import AutoModelForCausalLM

    from llmtune import train
    from llmtune.deploy.merge import merge

    llama = llama_model(ctx.models / "llama-small", 64, 2, 4, 2, 128)
    method = {"type": "lora", "r": 8, "quantization": "4bit"}
    make = recipe(llama, {"type": "translation", "source_lang": "de", "target_lang": "en", "generative": True,
                          "num_beams": 1, "max_target_length": 16},
                  ctx.files["translation"], ctx.work / "qlora", 4, ctx, method=method)  # fmt: skip
    make = make.model_copy(update={"training": make.training.model_copy(update={"gradient_checkpointing": True})})
    result = train(make, overwrite=True)
    merged = merge(result.run_dir, ctx.work / "qlora-merged", overwrite=True)
    model = AutoModelForCausalLM.from_pretrained(merged)
    return {
        "ok": True,
        "validation": {k: v for k, v in result.metrics["validation"].items() if isinstance(v, (int, float))},
        "peak_gpu_memory_mb": result.metrics["train"].get("peak_gpu_memory_mb"),
        "merged_parameters": sum(p.numel() for p in model.parameters()),
    }


# What `accelerate launch` sets for each sharding engine: --use_fsdp --fsdp_version 2 (RAM-efficient loading is its
# default), and --use_deepspeed --zero_stage 3.
ENGINE_VARIABLES = {
    "fsdp": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"},
    "deepspeed": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
}
CPU_LAUNCHERS = {"fsdp": "fsdp_on_cpu", "deepspeed": "deepspeed_on_cpu"}  # (tests/: the engines forced onto gloo)


def check_fsdp(ctx) -> dict:
    return check_sharded(ctx, "fsdp")


def check_deepspeed(ctx) -> dict:
    if importlib.util.find_spec("deepspeed") is None:
        raise Skipped("deepspeed is not installed (pip install deepspeed; benchmarks/gpu_wheels.py carries it)")
    return check_sharded(ctx, "deepspeed")


def check_sharded(ctx, engine: str) -> dict:
    """A BERT classifier and a Llama decoder with LoRA on a generative task, each trained under `engine` and
    data-parallel (the same final loss), and under `engine` again resumed from its step-2 checkpoint."""
    import torch

    from llmtune.recipe import dump_recipe

    bert = bert_model(ctx.models / "bert-small", 64, 2, 2, 128)
    llama = llama_model(ctx.models / "llama-small", 64, 2, 4, 2, 128)
    translation = {"type": "translation", "source_lang": "de", "target_lang": "en", "generative": True,
                   "num_beams": 1, "max_target_length": 16}  # fmt: skip
    cases = {
        "classification/encoder": recipe(bert, {"type": "classification"}, ctx.files["classification"],
                                         ctx.work / "unused", 4, ctx),
        "translation/decoder+lora": recipe(llama, translation, ctx.files["translation"], ctx.work / "unused", 4,
                                           ctx, method={"type": "lora", "r": 8}),
    }  # fmt: skip
    cases = {
        name: made.model_copy(update={"checkpointing": made.checkpointing.model_copy(update={"keep_last": 5})})
        for name, made in cases.items()
        if name in ctx.sharded_cases.get(engine, cases)
    }  # fmt: skip  (the resume starts from step 2's checkpoint)
    processes = torch.cuda.device_count() if ctx.device == "cuda" else 2
    results = {}
    for name, made in cases.items():
        slug = f"{engine}-" + name.replace("/", "-").replace("+", "-")
        path = ctx.work / f"{slug}.yaml"
        path.write_text(dump_recipe(made))
        runs = {kind: ctx.work / f"{slug}-{kind}" for kind in ("sharded", "resumed")}
        if name not in ctx.ddp_runs:  # the same data-parallel reference for both engines: trained once
            ctx.ddp_runs[name] = ctx.work / f"ddp-{name.replace('/', '-').replace('+', '-')}"
            launch_llmtune(["train", path, "--output", ctx.ddp_runs[name], "--overwrite"], processes, engine=None)
        runs["ddp"] = ctx.ddp_runs[name]
        started = time.perf_counter()
        launch_llmtune(["train", path, "--output", runs["sharded"], "--overwrite"], processes, engine)
        seconds = time.perf_counter() - started
        shutil.copytree(runs["sharded"], runs["resumed"])
        shutil.rmtree(runs["resumed"] / "checkpoints" / "step-4")
        launch_llmtune(["train", path, "--output", runs["resumed"], "--resume"], processes, engine)
        ddp_gap = abs(last_loss(runs["sharded"]) - last_loss(runs["ddp"]))
        resume_gap = abs(last_loss(runs["resumed"]) - last_loss(runs["sharded"]))
        metrics = json.loads((runs["sharded"] / "metrics.json").read_text())
        results[name] = {
            "processes": processes,
            "final_loss_difference_vs_ddp": round(ddp_gap, 6),
            "resume_final_loss_difference": round(resume_gap, 6),
            "peak_gpu_memory_mb": metrics["train"].get("peak_gpu_memory_mb"),
            "seconds_sharded_run": round(seconds, 1),
            "ok": ddp_gap < 1e-2 and resume_gap < 1e-2,  # bf16 GPU kernels are not bit-reproducible
        }
        ctx.say(f"  {name}: {'ok' if results[name]['ok'] else 'FAILED'}")
    return {"ok": all(r["ok"] for r in results.values()), "runs": results}


def launch_llmtune(args: list, processes: int, engine: str | None) -> None:
    """`llmtune ARGS` under torchrun (data-parallel, or sharded by `engine`), through this script (see run_llmtune);
    raises with its last output lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for variables in ENGINE_VARIABLES.values():
        for variable in variables:
            env.pop(variable, None)
    env.update(ENGINE_VARIABLES.get(engine, {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(Path(__file__).resolve()), "llmtune", *map(str, args)]  # fmt: skip
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    if finished.returncode != 0:  # the first process's error, not torchrun's summary after it
        first = finished.stderr.find("Traceback")
        shown = finished.stderr[first : first + 3000] if first >= 0 else finished.stderr[-1500:]
        raise RuntimeError(f"{' '.join(map(str, args[:1]))} ({engine or 'ddp'}): {shown}")


def run_llmtune(args: list[str]) -> int:
    """One process of a launch_llmtune run: llmtune's CLI, without plots when matplotlib is missing, and on a
    machine without GPUs with the sharding engine forced onto the CPU processes (tests/*_on_cpu.py)."""
    import torch

    import llmtune.reports.plots
    from llmtune import cli

    if importlib.util.find_spec("matplotlib") is None:
        llmtune.reports.plots.save_plots = lambda run_dir: None
    switches = {"fsdp": "ACCELERATE_USE_FSDP", "deepspeed": "ACCELERATE_USE_DEEPSPEED"}
    engine = next((name for name, variable in switches.items() if os.environ.get(variable)), None)
    if engine and not torch.cuda.is_available():
        sys.path.insert(0, str(ROOT / "tests"))
        importlib.import_module(CPU_LAUNCHERS[engine]).install()
    sys.argv = ["llmtune", *args]
    cli.main()
    return 0


def speed_rows(count: int) -> list[dict]:
    """Made-up sentences with SST-2-like lengths (log-normal, median ~10 words, 2 to 55)."""
    rng = random.Random(1)
    return [
        {"text": text, "label": label}
        for text, label in (sentence(rng, min(55, max(2, round(rng.lognormvariate(2.3, 0.6))))) for _ in range(count))
    ]


def nominal_peak(ctx) -> tuple[float, str]:
    """The GPU's dense bf16 peak by its name, else the measured matmul peak llmtune uses."""
    import torch

    from llmtune.engine import speed

    if ctx.device == "cuda":
        name = torch.cuda.get_device_name()
        for key, flops in NOMINAL_BF16_PEAK.items():
            if key in name:
                return flops, f"{name}: nominal dense bf16 {flops / 1e12:.0f} TFLOP/s"
    measured = speed.matmul_peak_flops(torch.device(ctx.device))
    return measured, f"measured matmul peak {measured / 1e12:.2f} TFLOP/s"


def check_speed(ctx) -> dict:
    from llmtune import train
    from llmtune.engine import speed

    bert = bert_model(ctx.models / "bert-speed", *ctx.speed_shape)
    rows = speed_rows(ctx.speed_rows)
    files = {"train": write_jsonl(ctx.work / "speed-train.jsonl", rows),
             "validation": write_jsonl(ctx.work / "speed-val.jsonl", rows[:64])}  # fmt: skip
    peak, peak_note = nominal_peak(ctx)
    mean_tokens = 2 + sum(len(r["text"].split()) for r in rows) / len(rows)
    budget = int(32 * mean_tokens)  # the same mean examples per step as the Trainer's batch of 32
    make = recipe(bert, {"type": "classification"}, files, ctx.work / "speed-llmtune", 1, ctx)
    training = make.training.model_copy(update={
        "max_steps": None, "epochs": 1, "max_tokens": budget, "compile": ctx.device == "cuda",
        "learning_rate": 1e-4, "warmup_ratio": 0.06, "log_every_n_steps": 50})  # fmt: skip
    make = make.model_copy(
        update={
            "training": training,
            "data": make.data.model_copy(update={"validation": None}),
            "checkpointing": make.checkpointing.model_copy(update={"every_n_steps": None}),
        }
    )
    reset_peak(ctx)
    start = time.perf_counter()
    ours = train(make, overwrite=True).metrics["train"]
    ours_wall = time.perf_counter() - start
    flops = speed.flops_per_token(load_classifier(bert))[0]
    llmtune_row = {
        "samples_per_s": ours["samples_per_s"], "tokens_per_s": ours["tokens_per_s"],
        "mfu": round(flops * ours["tokens_per_s"] / peak, 4), "training_s": ours["training_s"],
        "wall_s": round(ours_wall, 1), "peak_gpu_memory_mb": ours.get("peak_gpu_memory_mb"),
        "batches": f"token budget {budget}, compile {training.compile}",
    }  # fmt: skip
    trainer_row = run_trainer(bert, rows, ctx, flops, peak)
    ratio = llmtune_row["samples_per_s"] / trainer_row["samples_per_s"] if trainer_row["samples_per_s"] else None
    return {"ok": True, "peak": peak_note, "examples": len(rows), "llmtune": llmtune_row, "trainer": trainer_row,
            "speedup_samples_per_s": round(ratio, 3) if ratio else None}  # fmt: skip


def reset_peak(ctx) -> None:
    import torch

    if ctx.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def load_classifier(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def run_trainer(bert: Path, rows: list[dict], ctx, flops: float, peak: float) -> dict:
    """transformers.Trainer as a practitioner sets it up for speed: bf16, group_by_length, dynamic padding."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(bert)
    encoded = [{**tokenizer(r["text"], truncation=True, max_length=64), "labels": r["label"]} for r in rows]
    tokens = sum(len(e["input_ids"]) for e in encoded)
    # The names changed within transformers 5 (group_by_length became a sampling strategy, warmup_ratio a float
    # warmup_steps): take whichever this version has.
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    grouping = {"train_sampling_strategy": "group_by_length"}
    if "group_by_length" in accepted:
        grouping = {"group_by_length": True}
    warmup = {"warmup_ratio": 0.06} if "warmup_ratio" in accepted else {"warmup_steps": 0.06}
    args = TrainingArguments(
        output_dir=str(ctx.work / "speed-trainer"), per_device_train_batch_size=32, num_train_epochs=1,
        learning_rate=1e-4, bf16=ctx.precision == "bf16", report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=ctx.device == "cpu", seed=0, **grouping, **warmup,
    )  # fmt: skip
    reset_peak(ctx)
    trainer = Trainer(model=load_classifier(bert), args=args, train_dataset=encoded,
                      data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    times = {}

    class Clock(__import__("transformers").TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync(ctx)
            times["begin"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            sync(ctx)
            times["end"] = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    seconds = times["end"] - times["begin"]
    memory = round(torch.cuda.max_memory_allocated() / 2**20, 1) if ctx.device == "cuda" else None
    return {"samples_per_s": round(len(rows) / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "mfu": round(flops * tokens / seconds / peak, 4), "training_s": round(seconds, 2),
            "peak_gpu_memory_mb": memory, "batches": "32, group_by_length, DataCollatorWithPadding"}  # fmt: skip


def sync(ctx) -> None:
    import torch

    if ctx.device == "cuda":
        torch.cuda.synchronize()


def check_generation(ctx) -> dict:
    """Generated tokens per second of `llmtune.evaluate` on a generative task (greedy)."""
    from transformers import AutoTokenizer

    from llmtune import evaluate
    from llmtune.recipe import dump_recipe

    decoder = llama_model(ctx.models / "smollm2-shape", 576, 30, 9, 3, 1536)
    count, new_tokens = ctx.generation_rows, 64
    rows = [{"de": " ".join(map(deutsch, sentence(random.Random(i), 8)[0].split())), "en": "x"} for i in range(count)]
    test = write_jsonl(ctx.work / "generation-test.jsonl", rows)
    task = {"type": "translation", "source_lang": "de", "target_lang": "en", "generative": True, "num_beams": 1,
            "max_new_tokens": new_tokens, "max_target_length": new_tokens}  # fmt: skip
    made = recipe(decoder, task, {"train": test, "validation": test}, ctx.work / "generation", 1, ctx)
    made = made.model_copy(update={"data": made.data.model_copy(update={"test": made.data.validation})})
    path = ctx.work / "generation.yaml"
    path.write_text(dump_recipe(made))
    start = time.perf_counter()
    metrics, predictions = evaluate(path, split="test")
    seconds = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(decoder)
    generated = sum(len(tokenizer(p["predicted"], add_special_tokens=False)["input_ids"]) for p in predictions)
    return {"ok": True, "examples": count, "generated_tokens": generated, "seconds": round(seconds, 1),
            "tokens_per_s": round(generated / seconds, 1), "max_new_tokens": new_tokens,
            "eval_batch_size": made.training.eval_batch_size or 2 * made.training.batch_size}  # fmt: skip


class Skipped(Exception):
    """A check that cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", f"torch {report['torch']}, transformers "
             f"{report['transformers']}, {report['started']}; {report['seconds']:.0f} s in all", "",
             "| check | status | seconds | figures |", "|---|---|---|---|"]  # fmt: skip
    for name, result in report["checks"].items():
        figures = {k: v for k, v in result.items() if k not in ("status", "seconds", "traceback", "families")}
        lines.append(f"| {name} | {result['status']} | {result.get('seconds', '')} | `{json.dumps(figures)}` |")
    families = report["checks"].get("families", {}).get("families", {})
    if families:
        lines += ["", "| family | ok | seconds | reload max diff | resume loss diff | validation |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in families.items():
            lines.append(
                f"| {name} | {r['ok']} | {r['seconds']} | {r.get('reload_max_difference', '')} | "
                f"{r.get('resume_final_loss_difference', '')} | {r.get('validation', r.get('error'))} |"
            )
    return "\n".join(lines) + "\n"


class Context:
    def __init__(self, args):
        import torch

        self.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        if self.device == "auto":
            self.device = "cpu"
        self.precision = "bf16"
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.models = self.work / "models"
        self.files = make_data(self.work, 64)
        self.speed_rows = 512 if args.quick else 24000
        # BERT-base (hidden, layers, heads, intermediate); --quick: a small one, to run the same code in a test
        self.speed_shape = (128, 2, 2, 256) if args.quick else (768, 12, 12, 3072)
        self.generation_rows = 8 if args.quick else 256
        # --quick runs one case per sharding engine: every line of check_sharded still runs, and the suite's
        # tests/test_fsdp.py and tests/test_deepspeed.py train both cases under both engines already.
        quick_cases = {"fsdp": ["classification/encoder"], "deepspeed": ["translation/decoder+lora"]}
        self.sharded_cases = quick_cases if args.quick else {}
        self.ddp_runs: dict[str, Path] = {}
        self.say = lambda line: print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="small speed and generation data (CPU test)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks")
    parser.add_argument("--budget-s", type=float, default=450, help="start no check after this many seconds")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("matplotlib") is None:
        import llmtune.reports.plots

        # plots are PNGs for people, not part of what is checked
        llmtune.reports.plots.save_plots = lambda run_dir: None
        print("matplotlib is not installed: the runs skip their plots", flush=True)
    import torch
    import transformers

    ctx = Context(args)
    device = torch.cuda.get_device_name() if ctx.device == "cuda" else "CPU"
    report = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": 0.0, "checks": {}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    for name in args.only or list(CHECKS):
        start = time.perf_counter()
        if start - begin > args.budget_s:
            result = {"status": "skipped", "reason": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            ctx.say(f"{name}: running")
            try:
                result = CHECKS[name](ctx)
                result = {"status": "ok" if result.pop("ok") else "FAILED", **result}
            except Skipped as exc:
                result = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:
                result = {"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"[:500],
                          "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["checks"][name] = result
        report["seconds"] = time.perf_counter() - begin
        ctx.say(f"{name}: {result['status']} ({result['seconds']} s) {result.get('reason', result.get('error', ''))}")
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))
    shutil.rmtree(ctx.work, ignore_errors=True)
    print(markdown(report))
    return 0 if all(r["status"] != "FAILED" for r in report["checks"].values()) else 1


CHECKS = {
    "families": check_families,
    "qlora": check_qlora,
    "speed": check_speed,
    "generation": check_generation,
    "fsdp": check_fsdp,
    "deepspeed": check_deepspeed,
}

if __name__ == "__main__":
    sys.exit(run_llmtune(sys.argv[2:]) if sys.argv[1:2] == ["llmtune"] else main())
