"""A model 3.7x the size of SmolLM2-135M fine-tuned end to end on this machine: LoRA with gradient checkpointing.

No checkpoint of that size installs from the package registries, so the model has Qwen2.5-0.5B's exact shape
(494M parameters: 24 layers, width 896, 14 query / 2 key-value heads, MLP 4864, vocabulary 151,936, tied
embeddings) with random weights, and SmolLM2's tokenizer (its ids are all below the vocabulary size). Random
weights say nothing about quality; the run measures what fits and how fast: peak RSS, tokens/s, and the loss
falling as the model learns the prompt format and the captions' words.

The run: `recipes/translation-gpt.yaml` (Multi30k German -> English, prompt -> completion, packed rows of
128 tokens, LoRA r16 on every projection), batch 4, `--steps` steps, gradient checkpointing on, no evaluation.

Usage: python benchmarks/larger_model.py [--steps 200] [--work runs/bench-larger] [--no-checkpointing]
Reads ../shared/data (benchmark data; the package never refers to it). Run it alone: it measures speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def build_model(folder: Path) -> Path:
    """Qwen2.5-0.5B's configuration with random weights and SmolLM2-135M-Instruct's tokenizer."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llmtune import models
    from llmtune.models.schema import ModelSpec

    tokenizer = models.load_tokenizer(models.resolve_checkpoint(ModelSpec(name="HuggingFaceTB/SmolLM2-135M-Instruct")))
    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-larger"))
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args()
    model = build_model(args.work / "qwen2.5-0.5b-shape")
    pairs = f"{{de: {MULTI30K / 'train.de'}, en: {MULTI30K / 'train.en'}}}"
    overrides = [
        f"model.name={model}", f"data.train={{parallel: {pairs}, max_samples: {args.steps * 8}}}",
        "data.validation=null", "data.test=null", "evaluation.every_n_steps=null", "evaluation.metric_for_best=null",
        "checkpointing.at_epoch_end=false", "training.batch_size=4", f"training.max_steps={args.steps}",
        "training.log_every_n_steps=10", f"training.gradient_checkpointing={str(not args.no_checkpointing).lower()}",
    ]  # fmt: skip
    run = args.work / ("run" if not args.no_checkpointing else "run-no-checkpointing")
    command = [sys.executable, "-m", "llmtune", "train", str(ROOT / "recipes" / "translation-gpt.yaml")]
    command += [*(arg for item in overrides for arg in ("--set", item)), "--output", str(run), "--overwrite"]
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    summary = json.loads((run / "metrics.json").read_text())["train"]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    print(json.dumps({**summary, "first_logged_loss": losses[0], "last_logged_loss": losses[-1]}, indent=1))


if __name__ == "__main__":
    main()
