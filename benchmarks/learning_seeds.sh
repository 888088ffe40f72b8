#!/usr/bin/env bash
# The real-model learning tests' settings at 5 seeds each (benchmarks/seeds.py): where their thresholds come from
# (issue #34: a threshold sits below the lowest of the seeds, with the margin stated in the test).
#   smollm2-sst2: tests/test_decoder.py, SmolLM2-135M + LoRA (recipes/sentiment-gpt.yaml) on SST2_N (1,000) sentences;
#   lora-sst2:    tests/test_learning.py, MiniLM + LoRA r 16 on 4,000 SST-2 sentences, one epoch;
#   quickstart:   tests/test_learning.py, recipes/sentiment.yaml as shipped (the README's first command);
#   stsb:         tests/test_regression.py, MiniLM on 1,000 STS-B pairs, 2 epochs, 300 dev pairs;
#   goemotions:   tests/test_multi_label.py, MiniLM on 1,000 GoEmotions comments of five emotions, 2 epochs;
#   bert2bert:    tests/test_learning.py, BERT2BERT warm-started from MiniLM, 60 steps of Multi30k de->en, 200 sentences.
# Usage: bash benchmarks/learning_seeds.sh STUDY [OUT_DIR] [extra seeds.py arguments]; SEEDS="1 2" runs only those.
# Writes OUT_DIR/STUDY/seeds.md; finished seeds are reused. Reads ../shared/data (benchmark data).
set -euo pipefail
cd "$(dirname "$0")/.."
which="$1"
out="${2:-runs/learning-seeds}"
shift $(( $# > 2 ? 2 : $# ))
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
minilm="$(python -c 'import sys; sys.path.insert(0, "benchmarks"); from estimate_check import minilm_path; print(minilm_path())')"
seeds() { python benchmarks/seeds.py "$1" --seeds ${SEEDS:-1 2 3 4 5} --work "$out/$which" "${@:2}"; }
case "$which" in
  smollm2-sst2)
    smollm2="$out/smollm2"  # dequantized once from the offline GGUF package, as the suite's smollm2_path fixture is
    [ -f "$smollm2/config.json" ] || python -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks')
from estimate_check import smollm2_copy; smollm2_copy(Path('$out'))"
    seeds recipes/sentiment-gpt.yaml --set model.name="$smollm2" --set data.train="$shared/sst2/train.tsv" \
      --set data.train.max_samples="${SST2_N:-1000}" --set data.validation="$shared/sst2/validation.tsv" "$@" ;;
  lora-sst2)
    seeds recipes/sentiment.yaml --set data.train.path="$shared/sst2/train.tsv" --set data.train.max_samples=4000 \
      --set data.validation="$shared/sst2/validation.tsv" --set data.test=null --set task.text_column=sentence \
      --set task.label_names=null --set training.epochs=1 --set training.batch_size=32 --set method.type=lora \
      --set method.r=16 --set method.alpha=32 --set training.learning_rate=5e-4 "$@" ;;
  quickstart)
    seeds recipes/sentiment.yaml "$@" ;;
  stsb)
    seeds recipes/regression.yaml --set model.name="$minilm" \
      --set data.train="{path: $shared/stsb/train.jsonl, max_samples: 1000}" \
      --set data.validation="{path: $shared/stsb/dev.jsonl, max_samples: 300}" --set task.label_column=score \
      --set training.epochs=2 --set training.batch_size=16 --set training.max_length=64 "$@" ;;
  goemotions)
    mkdir -p "$out/goemotions-data"
    python - "$shared/goemotions" "$out/goemotions-data" "$minilm" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_multi_label import emotion_files, recipe_text  # the test's own files and recipe
files = emotion_files.__wrapped__(Path(sys.argv[1]), Path(sys.argv[2]))
(Path(sys.argv[2]) / "recipe.yaml").write_text(recipe_text(sys.argv[3], files))
EOF
    seeds "$out/goemotions-data/recipe.yaml" --set training.epochs=2 --set training.batch_size=16 \
      --set training.max_length=48 --set training.learning_rate=2e-4 "$@" ;;
  bert2bert)
    parallel() { echo "{parallel: {de: $shared/multi30k/$1.de, en: $shared/multi30k/$1.en}, max_samples: $2}"; }
    seeds recipes/translation.yaml --set model.name="$minilm" --set model.decoder="$minilm" \
      --set data.train="$(parallel train 4000)" --set data.validation="$(parallel val 200)" --set data.test=null \
      --set training.max_steps=60 --set training.batch_size=16 --set training.eval_batch_size=50 \
      --set training.learning_rate=3e-4 --set training.warmup_ratio=0.1 --set training.max_length=40 \
      --set task.max_target_length=40 --set task.num_beams=1 --set task.max_new_tokens=24 \
      --set evaluation.every_n_steps=60 --set evaluation.metric_for_best=null --set checkpointing.at_epoch_end=false "$@" ;;
  *) echo "unknown study '$which': expected smollm2-sst2, lora-sst2, quickstart, stsb, goemotions or bert2bert" >&2
     exit 2 ;;
esac
