#!/usr/bin/env bash
# MiniLM on the full SST-2 train split (67,349 sentences), one epoch, evaluated on the 872-sentence
# dev split: full fine-tuning and LoRA. Usage: bash benchmarks/sst2_full.sh [full|lora|both] [OUT_DIR]
# Environment: EVAL_EVERY (validation every N steps, default 1000), BATCH and LR (full fine-tuning's batch size
# and learning rate, default 32 and 1e-4; the other rows of the learning-rate table in docs/benchmarks.md),
# EPOCHS (default 1), WARMUP (warmup share, default 0.06), SCHEDULER (default linear) and HEAD_LR (the new
# classifier head's learning rate, default: the same as the body's); for LoRA, LORA_LR (default 5e-4), LORA_R (default
# 16, alpha twice it) and LORA_TARGETS (a YAML list of module names, default: the attention's query and value).
# Reads ../shared/data/sst2 (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"
out="${2:-runs/bench-sst2}"
sst2="$(cd .. && pwd)/shared/data/sst2"
export HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$out")"
common=(--set data.train.path="$sst2/train.tsv" --set data.validation="$sst2/validation.tsv" --set data.test=null
        --set task.text_column=sentence --set task.label_names=null
        --set training.epochs="${EPOCHS:-1}" --set training.warmup_ratio="${WARMUP:-0.06}"
        --set training.scheduler="${SCHEDULER:-linear}"
        --set evaluation.every_n_steps="${EVAL_EVERY:-1000}" --overwrite)
if [[ "$which" == full || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/sentiment.yaml "${common[@]}" --set training.batch_size="${BATCH:-32}" \
    --set training.learning_rate="${LR:-1e-4}" ${HEAD_LR:+--set training.head_learning_rate="$HEAD_LR"} \
    --output "$out/full" 2>&1 | tee "$out-full.log"
fi
if [[ "$which" == lora || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/sentiment.yaml "${common[@]}" --set method.type=lora --set method.r="${LORA_R:-16}" \
    --set method.alpha="$((2 * ${LORA_R:-16}))" ${LORA_TARGETS:+--set method.target_modules="$LORA_TARGETS"} \
    --set training.batch_size=32 --set training.learning_rate="${LORA_LR:-5e-4}" --output "$out/lora" 2>&1 | tee "$out-lora.log"
fi
