#!/usr/bin/env bash
# Named-entity recognition: MiniLM trained on WNUT 2017 train (3,394 sentences of noisy user text), chosen on
# dev (1,009) by entity F1, evaluated on test (1,287): full fine-tuning and LoRA (r 16).
# Usage: bash benchmarks/ner_wnut17.sh [full|lora|both] [OUT_DIR]
# Reads ../shared/data (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"
out="${2:-runs/bench-ner}"
wnut="$(cd .. && pwd)/shared/data/wnut17"
export HF_HUB_OFFLINE=1
mkdir -p "$out"
common=(--set data.train="$wnut/train.conll" --set data.validation="$wnut/dev.conll" --set data.test="$wnut/test.conll"
        --set task.tags_column=tags --set training.epochs=5 --set evaluation.metric_for_best=f1 --overwrite)
if [[ "$which" == full || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/ner.yaml "${common[@]}" --output "$out/full" 2>&1 | tee "$out/full.log"
fi
if [[ "$which" == lora || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/ner.yaml "${common[@]}" --set method.type=lora --set method.r=16 \
    --set method.alpha=32 --set training.learning_rate=1e-3 --output "$out/lora" 2>&1 | tee "$out/lora.log"
fi
