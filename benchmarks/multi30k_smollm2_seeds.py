"""The SmolLM2 Multi30k learning test's setting (tests/test_generative_seq2seq.py) at several seeds, and the
zero-shot model on the same sentences: where the test's thresholds come from.

    python benchmarks/multi30k_smollm2_seeds.py zeroshot,1,2,3 100 runs/mt-seeds

Arguments: what to run (comma-separated: `zeroshot` and/or training seeds), the number of validation sentences,
and a folder for the runs; each result is printed and appended to FOLDER/results.jsonl. Reads ../shared/data.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import RECIPES  # noqa: E402
from estimate_check import smollm2_copy  # noqa: E402
from test_generative_seq2seq import smollm2_multi30k_settings  # noqa: E402

from llmtune import evaluate, load_recipe, train  # noqa: E402


def smollm2_checkpoint(folder: Path) -> Path:
    """SmolLM2 dequantized once from its offline GGUF package, as the suite's smollm2_path fixture does."""
    path = folder / "smollm2"
    return path if (path / "config.json").exists() else smollm2_copy(folder)


def main() -> None:
    what, sentences, out = sys.argv[1].split(","), int(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    settings = smollm2_multi30k_settings(smollm2_checkpoint(out), sentences)
    recipe = RECIPES / "translation-gpt.yaml"
    for item in what:
        started = time.perf_counter()
        if item == "zeroshot":
            metrics, _ = evaluate(recipe, split="validation", overrides=settings)
        else:
            run = out / f"seed-{item}-n{sentences}"
            result = train(load_recipe(recipe, [*settings, f"training.seed={item}"]), output_dir=run, echo=print)
            metrics = result.metrics["validation"]
        figures = {k: v for k, v in metrics.items() if k != "signature"}
        line = {"what": item, "sentences": sentences, "seconds": round(time.perf_counter() - started), **figures}
        print(json.dumps(line), flush=True)
        with open(out / "results.jsonl", "a") as file:
            file.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
