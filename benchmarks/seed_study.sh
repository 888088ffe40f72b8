#!/usr/bin/env bash
# Issue #34's seed studies: the three small-data settings at 5 seeds each (benchmarks/seeds.py), with the recipes'
# own settings unless a setting is named here.
#   qa:   recipes/qa.yaml on 1,600 SQuADShifts questions, 1 epoch (100 steps), lr 3e-4, batch 16, warmup 10%,
#         max_length 192, doc_stride 64 (the QA learning test's settings), scored on all 1,190 XQuAD-en questions
#         (the test split) and on the first 200 (the validation split, as the learning test scores it);
#         the recipe's head_learning_rate (3e-3) and min_steps (300) apply unless --set to null;
#   sst2: recipes/sentiment.yaml on the first 1,000 SST-2 training sentences, scored on the 872-sentence dev split;
#   ner:  recipes/ner.yaml on the first 1,000 WNUT17 training sentences, scored on dev (1,009) and test (1,287)
#         (the NER learning test's settings, without the test split).
# SEEDS="1 2" runs only those seeds (two studies into one OUT_DIR, one per core, then one with all seeds for
# the table: finished seeds are reused).
# Usage: bash benchmarks/seed_study.sh [qa|sst2|ner|all] [OUT_DIR] [extra seeds.py arguments, e.g. --set k=v]
# Each study writes OUT_DIR/STUDY/seeds.md; finished seeds are reused. Reads ../shared/data (benchmark data).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
out="${2:-runs/seeds}"
shift $(( $# > 2 ? 2 : $# ))
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
common=(--set evaluation.every_n_steps=null --set checkpointing.at_epoch_end=false)
if [[ "$which" == qa || "$which" == all ]]; then
  python benchmarks/seeds.py recipes/qa.yaml --seeds ${SEEDS:-1 2 3 4 5} --work "$out/qa" "${common[@]}" \
    --set data.train="$shared/squadshifts/new_wiki_v1.0.json" --set data.train.max_samples=1600 \
    --set data.validation="$shared/xquad/xquad.en.json" --set data.validation.max_samples=200 \
    --set data.test="$shared/xquad/xquad.en.json" --set training.epochs=1 \
    --set training.max_length=192 --set task.doc_stride=64 --set training.batch_size=16 \
    --set training.learning_rate=3e-4 --set training.warmup_ratio=0.1 "$@"
fi
if [[ "$which" == sst2 || "$which" == all ]]; then
  python benchmarks/seeds.py recipes/sentiment.yaml --seeds ${SEEDS:-1 2 3 4 5} --work "$out/sst2" "${common[@]}" \
    --set data.train.path="$shared/sst2/train.tsv" --set data.train.max_samples=1000 \
    --set data.validation="$shared/sst2/validation.tsv" --set data.test=null \
    --set task.text_column=sentence --set task.label_names=null "$@"
fi
if [[ "$which" == ner || "$which" == all ]]; then
  python benchmarks/seeds.py recipes/ner.yaml --seeds ${SEEDS:-1 2 3 4 5} --work "$out/ner" "${common[@]}" \
    --set data.train="$shared/wnut17/train.conll" --set data.train.max_samples=1000 \
    --set data.validation="$shared/wnut17/dev.conll" --set data.test="$shared/wnut17/test.conll" \
    --set task.tags_column=tags "$@"
fi
