"""`llmtune serve` under load on loopback, against a naive transformers.pipeline server, side by side.

Servers, each its own process on 127.0.0.1, all answering the same dev-split SST-2 sentences:

1. baseline: `transformers.pipeline("text-classification")` behind a minimal FastAPI endpoint, one request
   per forward pass (a plain `def` endpoint, which FastAPI runs in its thread pool: what its docs advise
   for blocking code; `--baseline-loop` makes it `async def`, one request at a time on the event loop);
2. `llmtune serve RUN --backend torch` with its defaults (dynamic batches of up to 32, 5 ms wait);
3. `llmtune serve EXPORT --backend onnx`, the run exported with `llmtune export --quantize int8`.

Load: `--requests` (2,000) requests at each concurrency (1, 8, 32), from one asyncio client (httpx) with that
many connections. The servers take turns level by level, in a rotated order, for `--rounds` rounds, so a slow
spell of this noisy machine falls on all of them; figures are medians over rounds with [min-max] ranges, and
the speed-up ratios are taken round by round (same round, same concurrency) before their median. Each server
is warmed with 200 requests at the highest concurrency before its first level; RSS is read from
/proc/PID/status (VmRSS now, VmHWM peak) after that warm-up and at the end.

Generation: a SmolLM2-135M LoRA run trained on Multi30k (German -> English), served by `llmtune serve`, gets
`--gen-requests` test_2016 sentences at concurrency 1 and 8; tokens/s counts the generated tokens (the
run's tokenizer on each answer).

The runs are trained into `--work` when absent (MiniLM: 2,000 SST-2 sentences, 1 epoch; SmolLM2: LoRA on
256 pairs, 1 epoch). Every request has a 60 s timeout and every level a `--max-seconds` bound.

Usage: python benchmarks/serve_load.py [--work runs/bench-serve] [--rounds 3] [--requests 2000] [--markdown FILE]
Reads ../shared/data (benchmark data; the package never refers to it). Run it alone: it measures speed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SERVERS = ["baseline", "llmtune-torch", "llmtune-onnx-int8"]
WARMUP = 200


def sentences(limit: int | None = None) -> list[str]:
    with open(SHARED / "sst2" / "validation.tsv", encoding="utf-8", newline="") as handle:
        return [row["sentence"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)][:limit]


def german(limit: int) -> list[str]:
    return (SHARED / "multi30k" / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[:limit]


# ---------------------------------------------------------------------------------------------- the runs


def llmtune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "llmtune", *map(str, args)], check=True, env=offline())


def offline() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def classification_run(work: Path) -> Path:
    run = work / "minilm-sst2"
    if not (run / "metrics.json").exists():
        sst2 = SHARED / "sst2"
        llmtune(
            "train", ROOT / "recipes" / "sentiment.yaml", "--output", run, "--overwrite",
            "--set", f"data.train={{path: {sst2 / 'train.tsv'}, max_samples: 2000}}",
            "--set", f"data.validation={sst2 / 'validation.tsv'}", "--set", "data.test=null",
            "--set", "task.text_column=sentence", "--set", "task.label_names=null", "--set", "training.epochs=1",
        )  # fmt: skip
    return run


def onnx_export(work: Path, run: Path) -> Path:
    export = work / "minilm-sst2-onnx-int8"
    if not (export / "model_quantized.onnx").exists():
        llmtune("export", run, "--format", "onnx", "--quantize", "int8", "--output", export, "--overwrite")
    return export


def generative_run(work: Path) -> Path:
    run = work / "smollm2-multi30k-lora"
    if not (run / "metrics.json").exists():
        m = SHARED / "multi30k"
        llmtune(
            "train", ROOT / "recipes" / "translation-gpt.yaml", "--output", run, "--overwrite",
            "--set", f"data.train={{parallel: {{de: {m / 'train.de'}, en: {m / 'train.en'}}}, max_samples: 256}}",
            "--set", "data.validation=null", "--set", "data.test=null", "--set", "evaluation.every_n_steps=null",
            "--set", "evaluation.metric_for_best=null", "--set", "training.batch_size=16",
        )  # fmt: skip
    return run


# ---------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, name: str, command: list[str], log: Path):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=offline()
        )
        self.rss: dict[str, float] = {}

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not start within {timeout:.0f} s; see {self.log.name}")

    def memory(self) -> dict[str, float]:
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # MiB
        return fields

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Body(BaseModel):  # the baseline's request (module level: FastAPI resolves the annotation by name)
    inputs: str


def baseline_server(run: str, port: int, on_loop: bool) -> None:
    """The naive peer: one pipeline call per request."""
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    classify = pipeline("text-classification", model=run, tokenizer=run, device="cpu")
    app = FastAPI()

    def predict(body: Body) -> dict:
        return {"predictions": classify(body.inputs, truncation=True, max_length=128)}

    async def predict_on_loop(body: Body) -> dict:
        return predict(body)

    app.post("/v1/predict")(predict_on_loop if on_loop else predict)
    app.get("/health")(lambda: {"status": "ok"})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_servers(run: Path, export: Path, work: Path, on_loop: bool) -> dict[str, Server]:
    baseline = [sys.executable, __file__, "--baseline-server", str(run)] + (["--baseline-loop"] if on_loop else [])
    serve = [sys.executable, "-m", "llmtune", "serve"]
    commands = {
        "baseline": baseline,
        "llmtune-torch": [*serve, str(run), "--backend", "torch"],
        "llmtune-onnx-int8": [*serve, str(export), "--backend", "onnx"],
    }
    servers = {name: Server(name, command, work / f"{name}.log") for name, command in commands.items()}
    for server in servers.values():
        server.wait_ready()
    return servers


# ---------------------------------------------------------------------------------------------- load


async def load(url: str, payloads: list[dict], concurrency: int, max_seconds: float, path: str = "/v1/predict"):
    """Send every payload (or as many as `max_seconds` allows) with `concurrency` connections."""
    import httpx

    latencies, failures, answers = [], Counter(), []
    queue = iter(payloads)
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for payload in queue:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    response = await client.post(path, json=payload)
                    failure = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    failure = type(error).__name__
                latencies.append(time.perf_counter() - start)
                if failure is None:
                    answers.append(response.json())
                else:
                    failures[failure] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "sent": len(latencies),
        "failed": sum(failures.values()),
        "why": dict(failures),
        "wall": wall,
        "latencies": latencies,
        "answers": answers,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(result: dict) -> dict:
    lat = result["latencies"]
    return {
        "sent": result["sent"],
        "failed": result["failed"],
        "why": result["why"],
        "rps": (result["sent"] - result["failed"]) / result["wall"],  # answered requests per second
        **{f"p{q}_ms": 1000 * percentile(lat, q) for q in (50, 95, 99)},
    }


def classification_load(servers: dict[str, Server], args) -> dict:
    texts = sentences()
    payloads = [{"inputs": texts[i % len(texts)]} for i in range(args.requests)]
    results: dict = {name: {c: [] for c in args.concurrency} for name in servers}
    top = max(args.concurrency)
    for server in servers.values():
        asyncio.run(load(server.url, payloads[:WARMUP], top, args.max_seconds))
        server.rss["start"] = server.memory()
    names = list(servers)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for concurrency in args.concurrency:
            for name in order:
                summary = summarize(asyncio.run(load(servers[name].url, payloads, concurrency, args.max_seconds)))
                results[name][concurrency].append(summary)
                print(f"round {round_ + 1} c={concurrency:<3d} {name:18s} {json.dumps(summary)}", flush=True)
    for server in servers.values():
        server.rss["end"] = server.memory()
    return results


def generation_load(run: Path, work: Path, args) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    server = Server("llmtune-generate", [sys.executable, "-m", "llmtune", "serve", str(run)], work / "generate.log")
    results = {}
    try:
        server.wait_ready()
        payloads = [{"inputs": {"de": text}} for text in german(args.gen_requests)]
        asyncio.run(load(server.url, payloads[:8], 8, args.max_seconds))  # warm-up
        for concurrency in (1, 8):
            result = asyncio.run(load(server.url, payloads, concurrency, args.max_seconds))
            texts = [row["predicted"] for answer in result["answers"] for row in answer["predictions"]]
            tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)
            results[concurrency] = {**summarize(result), "tokens": tokens, "tokens_per_s": tokens / result["wall"]}
            print(f"generate c={concurrency} {json.dumps(results[concurrency])}", flush=True)
        results["rss"] = server.memory()
    finally:
        server.stop()
    return results


# ---------------------------------------------------------------------------------------------- report


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def ratios(results: dict, over: str, under: str, concurrency: int) -> list[float]:
    return [a["rps"] / b["rps"] for a, b in zip(results[over][concurrency], results[under][concurrency])]


def markdown(results: dict, rss: dict, generation: dict, args) -> str:
    lines = [
        "| server | concurrency | requests/s | p50 ms | p95 ms | p99 ms | failed / sent |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, levels in results.items():
        for concurrency, rounds in levels.items():
            cells = [spread([r[key] for r in rounds]) for key in ("rps", "p50_ms", "p95_ms", "p99_ms")]
            failed, sent = sum(r["failed"] for r in rounds), sum(r["sent"] for r in rounds)
            lines.append(f"| {name} | {concurrency} | {' | '.join(cells)} | {failed} / {sent} |")
    lines += ["", "| ratio (round by round) | " + " | ".join(f"c={c}" for c in args.concurrency) + " |"]
    lines.append("|---|" + "---:|" * len(args.concurrency))
    for over, under in (("llmtune-torch", "baseline"), ("llmtune-onnx-int8", "llmtune-torch")):
        cells = [spread(ratios(results, over, under, c), 2) + "×" for c in args.concurrency]
        lines.append(f"| {over} / {under} | {' | '.join(cells)} |")
    lines += ["", "| server | RSS after warm-up (MiB) | RSS at end | peak after warm-up | peak at end | peak growth |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, memory in rss.items():
        start, end = memory["start"], memory["end"]
        growth = 100 * (end["VmHWM"] / start["VmHWM"] - 1)
        lines.append(
            f"| {name} | {start['VmRSS']:.0f} | {end['VmRSS']:.0f} | {start['VmHWM']:.0f} | {end['VmHWM']:.0f} "
            f"| {growth:+.1f}% |"
        )
    if generation:
        lines += ["", "| SmolLM2 LoRA (Multi30k de→en) | requests | tokens | tokens/s | p50 ms | p95 ms | failed |"]
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for concurrency in (1, 8):
            g = generation[concurrency]
            lines.append(
                f"| concurrency {concurrency} | {g['sent']} | {g['tokens']} | {g['tokens_per_s']:.1f} "
                f"| {g['p50_ms']:.0f} | {g['p95_ms']:.0f} | {g['failed']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-serve")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--gen-requests", type=int, default=48)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--baseline-loop", action="store_true", help="the baseline endpoint is async def")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        return baseline_server(args.baseline_server, args.port, args.baseline_loop)
    args.work.mkdir(parents=True, exist_ok=True)
    run = classification_run(args.work)
    export = onnx_export(args.work, run)
    generative = None if args.skip_generation else generative_run(args.work)
    servers = start_servers(run, export, args.work, args.baseline_loop)
    try:
        results = classification_load(servers, args)
    finally:
        for server in servers.values():
            server.stop()
    rss = {name: server.rss for name, server in servers.items()}
    generation = {} if generative is None else generation_load(generative, args.work, args)
    report = markdown(results, rss, generation, args)
    print(report)
    measured = {"classification": results, "rss": rss, "generation": generation}
    (args.work / "results.json").write_text(json.dumps(measured))
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
