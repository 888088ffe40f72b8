"""Dynamic batching for `llmtune serve`: a bounded queue of inputs, batches made of the requests that arrive
together, and the one worker thread that runs the model, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..inference.prediction import predict_rows
from ..inference.saved import LoadedRun
from .serve_http import Refused, Settings

log = logging.getLogger("llmtune.serve")  # the server's log (access lines, faults)


# On a CPU, padding costs as much as text: a batch of 32 random SST-2 sentences ran 1.35x faster through MiniLM
# cut by length into forward passes of at most 512 padded tokens than in one pass (benchmarks/serve_load.py).
# A GPU has compute to spare, so there the whole batch goes in one pass.
CPU_BATCH_TOKENS = 512


@dataclass
class Job:
    """One input waiting for the model. Jobs with the same key run as one batch."""

    key: tuple
    payload: Any
    future: asyncio.Future
    stream: asyncio.Queue | None = None  # streamed generation: text pieces, then None


class Batcher:
    """The bounded queue of inputs and the one worker thread that runs the model on batches of them."""

    def __init__(self, loaded: LoadedRun, settings: Settings):
        self.loaded, self.settings = loaded, settings
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pending = 0  # inputs taken and not yet answered: waiting, batching or running (bounded by max_queue)
        self.last_batch = 2  # as if requests came concurrently, until a lone one shows they do not
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmtune-model")
        self.task: asyncio.Task | None = None
        self.max_length = loaded.max_length
        on_cpu = next(loaded.model.parameters()).device.type == "cpu"
        by_tokens = on_cpu and not loaded.task.generates_text
        self.max_batch_tokens = settings.max_batch_tokens or (CPU_BATCH_TOKENS if by_tokens else None)

    async def submit(self, key: tuple, payloads: list, stream: bool = False) -> list:
        """Results in the order of `payloads`; raises Refused(503) when the queue cannot take them all."""
        if self.pending + len(payloads) > self.settings.max_queue:
            raise Refused(503, "the server is busy (its queue is full); retry shortly", {"Retry-After": "1"})
        self.pending += len(payloads)
        loop = asyncio.get_running_loop()
        jobs = [Job(key, payload, loop.create_future(), asyncio.Queue() if stream else None) for payload in payloads]
        for job in jobs:
            self.queue.put_nowait(job)
        if stream:
            return jobs
        return await asyncio.gather(*(job.future for job in jobs))

    async def collect(self) -> list[Job]:
        """The next batch: the jobs waiting, then, when requests come concurrently, those that arrive within
        max_wait_ms (up to max_batch_size). A lone client's request runs at once: after a batch of one with
        nothing waiting, no company is waited for (at concurrency 1 that wait was a fifth of the latency)."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        concurrent = self.last_batch > 1 or not self.queue.empty()
        deadline = loop.time() + (self.settings.max_wait_ms / 1000 if concurrent else 0)
        while len(batch) < self.settings.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            if deadline <= loop.time():
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
            except asyncio.TimeoutError:
                break
        self.last_batch = len(batch)
        return batch

    async def run(self) -> None:
        """Run the batches `collect` makes, a key at a time, and answer each job."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.collect()
            for key in dict.fromkeys(job.key for job in batch):
                group = [job for job in batch if job.key == key]
                try:
                    results = await loop.run_in_executor(self.worker, self.process, key, group, loop)
                except Exception as error:  # an internal fault: these requests fail, the server goes on
                    log.exception("inference failed")
                    results = [error] * len(group)
                self.pending -= len(group)
                for job, result in zip(group, results):
                    if job.future.done():  # the client went away
                        continue
                    if isinstance(result, Exception):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result((result, len(group)))

    def process(self, key: tuple, jobs: list[Job], loop) -> list:
        """On the worker thread: one batch through the model."""
        if key[0] == "predict":
            loaded = self.loaded
            payloads = [job.payload for job in jobs]
            return predict_rows(
                loaded.task, loaded.model, loaded.tokenizer, payloads, self.max_length, len(jobs), self.max_batch_tokens
            )
        from .generate import generate_texts, stream_text

        if key[0] == "stream":
            return [stream_text(self.loaded, jobs[0].payload, jobs[0].stream, loop)]
        return generate_texts(self.loaded, [job.payload for job in jobs])
