#!/usr/bin/env bash
# MiniLM on GoEmotions (28 labels, multi-label), full fine-tuning from recipes/multilabel.yaml, decision thresholds
# tuned per label on the dev split, scored on the 5,427-comment test split (macro-F1 and micro-F1 in the log's last
# line and in OUT_DIR/metrics.json). Usage: bash benchmarks/goemotions.sh [OUT_DIR]
# Environment (each overrides the recipe's value when set): TRAIN_SAMPLES (the first N of the 43,410 train comments;
# default all), DEV_SAMPLES (the first N of the 5,426 dev comments to validate and tune thresholds on; default all),
# EPOCHS, LR, HEAD_LR (the new classifier head's learning rate), BATCH, MAX_LENGTH, THRESHOLD (task.threshold) and
# POS_WEIGHT (task.pos_weight: balanced, or null for none).
# Reads ../shared/data/goemotions (benchmark data; the package never refers to it); the recipe's hub dataset is the
# same data with the same splits.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-goemotions}"
data="$(cd .. && pwd)/shared/data/goemotions"
export HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$out")"
train="{path: $data/train.jsonl${TRAIN_SAMPLES:+, max_samples: $TRAIN_SAMPLES}}"
dev="{path: $data/dev.jsonl${DEV_SAMPLES:+, max_samples: $DEV_SAMPLES}}"
settings=()
for pair in "training.epochs=${EPOCHS:-}" "training.learning_rate=${LR:-}" "training.head_learning_rate=${HEAD_LR:-}" \
  "training.batch_size=${BATCH:-}" "training.max_length=${MAX_LENGTH:-}" "task.threshold=${THRESHOLD:-}" \
  "task.pos_weight=${POS_WEIGHT:-}"; do
  if [[ -n "${pair#*=}" ]]; then settings+=(--set "$pair"); fi
done
/usr/bin/time -v python -m llmtune train recipes/multilabel.yaml --set data.train="$train" \
  --set data.validation="$dev" --set data.test="$data/test.jsonl" ${settings[@]+"${settings[@]}"} \
  --output "$out" --overwrite 2>&1 | tee "$out.log"
