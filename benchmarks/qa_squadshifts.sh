#!/usr/bin/env bash
# Extractive QA: MiniLM trained on all of SQuADShifts New Wikipedia (7,938 questions), evaluated on
# all of XQuAD-en (1,190 SQuAD v1.1 dev questions, no overlap): full fine-tuning and LoRA.
# Usage: bash benchmarks/qa_squadshifts.sh [full|lora|both] [OUT_DIR] [extra llmtune train arguments, e.g. --set k=v]
# Environment: EPOCHS (default 1), LR (full fine-tuning's learning rate, default 3e-4), BATCH (default 32).
# Reads ../shared/data (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"
out="${2:-runs/bench-qa}"
shift $(( $# > 2 ? 2 : $# ))
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
mkdir -p "$out"
common=(--set data.train="$shared/squadshifts/new_wiki_v1.0.json" --set data.validation="$shared/xquad/xquad.en.json" --set data.test=null
        --set training.epochs="${EPOCHS:-1}" --set training.warmup_ratio=0.1 --set training.batch_size="${BATCH:-32}" --set training.max_length=384
        --set task.doc_stride=128 --set evaluation.every_n_steps=null --set checkpointing.at_epoch_end=false --overwrite)
if [[ "$which" == full || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/qa.yaml "${common[@]}" --set training.learning_rate="${LR:-3e-4}" --output "$out/full" "$@" 2>&1 | tee "$out/full.log"
fi
if [[ "$which" == lora || "$which" == both ]]; then
  /usr/bin/time -v llmtune train recipes/qa.yaml "${common[@]}" --set method.type=lora --set method.r=16 --set method.alpha=32 \
    --set training.learning_rate=1e-3 --output "$out/lora" "$@" 2>&1 | tee "$out/lora.log"
fi
