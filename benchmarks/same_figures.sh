#!/usr/bin/env bash
# Three runs whose figures must not change when the code is only moved: the README's sentiment run, a generative run
# (SmolLM2 + LoRA, Multi30k translation with packing, 12 steps) and an extractive QA run (MiniLM, 200 SQuADShifts
# questions), each trained, then evaluated on its test split by `llmtune eval`. About 12 minutes on 2 CPU cores.
# Run it on the old and the new code, then compare: python benchmarks/same_figures.py OUT_BEFORE OUT_AFTER
# Usage: bash benchmarks/same_figures.sh OUT_DIR   (reads ../shared/data, benchmark data)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
mkdir -p "$out"
llmtune train recipes/sentiment.yaml --output "$out/sentiment" --overwrite > "$out/sentiment.log" 2>&1
llmtune train recipes/translation-gpt.yaml --output "$out/generative" --overwrite \
  --set data.train="{parallel: {de: $shared/multi30k/train.de, en: $shared/multi30k/train.en}, max_samples: 256}" \
  --set data.validation="{parallel: {de: $shared/multi30k/val.de, en: $shared/multi30k/val.en}, max_samples: 32}" \
  --set data.test="{parallel: {de: $shared/multi30k/test_2016_flickr.de, en: $shared/multi30k/test_2016_flickr.en}, max_samples: 32}" \
  --set training.max_steps=12 --set training.batch_size=16 --set evaluation.every_n_steps=6 > "$out/generative.log" 2>&1
llmtune train recipes/qa.yaml --output "$out/qa" --overwrite \
  --set data.train="$shared/squadshifts/new_wiki_v1.0.json" --set data.train.max_samples=200 \
  --set data.validation="$shared/xquad/xquad.en.json" --set data.validation.max_samples=60 \
  --set data.test="$shared/xquad/xquad.en.json" --set data.test.max_samples=120 \
  --set training.min_steps=null --set training.max_length=192 --set task.doc_stride=64 --set training.batch_size=16 \
  --set evaluation.every_n_steps=null > "$out/qa.log" 2>&1
for run in sentiment generative qa; do
  llmtune eval "$out/$run" --split test --output "$out/$run.eval.json" >> "$out/$run.log" 2>&1
done
