"""What the model alone allows a server on this machine, and where a serving process's memory goes.

The figures `docs/benchmarks.md` sets beside `serve_load.py`'s, measured without HTTP, on the runs
`serve_load.py` trains into `--work`:

1. MiniLM SST-2, sentences/s: one dev sentence per forward pass; random groups of 32 in one padded pass; the
   same groups cut by `predict_rows` into passes of <= 512 padded tokens; a pool of 256 sorted by length and
   cut into batches of 32 (the best a batching server can do).
2. Memory: `--batches` random batches of 1-32 sentences through `predict_rows` (what `llmtune serve` runs),
   in a fresh process, with glibc's default and with `MALLOC_MMAP_THRESHOLD_=65536`: RSS and the count of
   Python objects every 60 batches, and the seconds each block took.
3. SmolLM2 LoRA (adapter folded in), plain `model.generate`: tokens/s for one sentence and for 8 at once,
   each forced to 20 new tokens.

Usage: python benchmarks/serve_ceiling.py [--work runs/bench-serve] [--json FILE]
Run it alone: it measures speed. Reads ../shared/data (benchmark data; the package never refers to it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import classification_run, generative_run, german, sentences  # noqa: E402

BLOCK = 60


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def model_ceiling(run: Path) -> dict:
    import torch

    from llmtune import models
    from llmtune.inference.prediction import predict_rows
    from llmtune.inference.saved import load_run

    loaded = load_run(run)
    model, tokenizer, task = loaded.model, loaded.tokenizer, loaded.task
    limit = models.effective_max_length(model.config, loaded.recipe.training.max_length)
    texts = sentences()
    rng = random.Random(0)

    def passes(batches: list[list[str]]) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                model(**tokenizer(batch, truncation=True, max_length=limit, padding=True, return_tensors="pt"))
        return time.perf_counter() - start

    def predicted(groups: list[list[str]], budget: int | None) -> float:
        start = time.perf_counter()
        for group in groups:
            predict_rows(task, model, tokenizer, [{"sentence": t} for t in group], limit, len(group), budget)
        return time.perf_counter() - start

    passes([texts[:32]])  # warm-up
    singles = [[t] for t in texts[:256]]
    groups = [rng.sample(texts, 32) for _ in range(16)]
    pool = sorted(rng.sample(texts, 256), key=lambda t: len(tokenizer(t)["input_ids"]))
    return {
        "one_at_a_time": rate(len(singles), passes(singles)),
        "random_32_one_pass": rate(512, passes(groups)),
        "random_32_cut_512_tokens": rate(512, predicted(groups, 512)),
        "sorted_pool_256_by_32": rate(256, passes([pool[i : i + 32] for i in range(0, 256, 32)])),
    }


def memory_loop(run: Path, batches: int) -> None:
    """Child process: print one JSON line per block of batches."""
    from llmtune import models
    from llmtune.inference.prediction import predict_rows
    from llmtune.inference.saved import load_run

    loaded = load_run(run)
    limit = models.effective_max_length(loaded.model.config, loaded.recipe.training.max_length)
    texts, rng = sentences(), random.Random(0)
    for block in range(batches // BLOCK):
        start = time.perf_counter()
        for _ in range(BLOCK):
            group = rng.sample(texts, rng.randint(1, 32))
            predict_rows(
                loaded.task, loaded.model, loaded.tokenizer, [{"sentence": t} for t in group], limit, len(group), 512
            )
        gc.collect()
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Vm"))
        mib = {key: int(status[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}
        line = {"batches": (block + 1) * BLOCK, "seconds": round(time.perf_counter() - start, 2), **mib}
        print(json.dumps({**line, "python_objects": len(gc.get_objects())}), flush=True)


def memory(run: Path, batches: int) -> dict:
    results = {}
    for name, extra in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=65536", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
        command = [sys.executable, __file__, "--memory-child", str(run), "--batches", str(batches)]
        output = subprocess.run(command, env={**os.environ, **extra}, capture_output=True, text=True, check=True)
        results[name] = [json.loads(line) for line in output.stdout.splitlines() if line.startswith("{")]
    return results


def generation(run: Path) -> dict:
    import torch

    from llmtune.deploy.serve import with_adapter_merged
    from llmtune.inference.saved import load_run

    loaded = with_adapter_merged(load_run(run))
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.padding_side = "left"
    texts, new = german(16), 20

    def tokens_per_second(batch: list[str]) -> float:
        inputs = tokenizer(batch, return_tensors="pt", padding=True)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return new * len(batch) / (time.perf_counter() - start)

    tokens_per_second(texts[:1])  # warm-up
    return {
        "batch_1": round(sorted(tokens_per_second([t]) for t in texts[:8])[4], 1),
        "batch_8": round(sorted(tokens_per_second(texts[i : i + 8]) for i in (0, 8, 0))[1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    parser.add_argument("--batches", type=int, default=480)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_loop(args.memory_child, args.batches)
    args.work.mkdir(parents=True, exist_ok=True)
    run = classification_run(args.work)
    results = {
        "minilm_sentences_per_s": model_ceiling(run),
        "memory": memory(run, args.batches),
        "smollm2_generate_tokens_per_s": generation(generative_run(args.work)),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
