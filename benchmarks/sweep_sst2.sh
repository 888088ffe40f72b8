#!/usr/bin/env bash
# A hyper-parameter sweep of MiniLM full fine-tuning on the first N SST-2 training sentences (one epoch),
# scored on the 872-sentence dev split every 25 steps (the pruner sees each), with the space in
# benchmarks/sweep_sst2_space.yaml. Usage: bash benchmarks/sweep_sst2.sh [TRIALS] [N] [OUT_DIR]
# Reads ../shared/data/sst2 (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-8}"
n="${2:-2000}"
out="${3:-runs/sweep-sst2}"
sst2="$(cd .. && pwd)/shared/data/sst2"
export HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$out")"
/usr/bin/time -v llmtune sweep recipes/sentiment.yaml --space benchmarks/sweep_sst2_space.yaml --trials "$trials" \
  --output "$out" \
  --set data.train.path="$sst2/train.tsv" --set data.train.max_samples="$n" \
  --set data.validation="$sst2/validation.tsv" --set data.test=null \
  --set task.text_column=sentence --set task.label_names=null \
  --set training.epochs=1 --set evaluation.every_n_steps=25 2>&1 | tee "$out.log"
llmtune report "$out"
