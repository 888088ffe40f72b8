"""`llmtune serve`: a finished run behind an HTTP API (FastAPI and uvicorn), with dynamic batching.

    POST /v1/predict            one input or a list, answered with the task's prediction rows
    POST /v1/completions        causal-LM runs: OpenAI-compatible text completion (streaming with SSE)
    POST /v1/chat/completions   causal-LM runs: OpenAI-compatible chat, through the tokenizer's chat template
    GET  /v1/models, /health    the run (base model, task, method, metrics); liveness
    GET  /docs                  the OpenAPI documentation FastAPI writes

Concurrent requests that arrive within `max_wait_ms` of each other are answered as one batch (up to `max_batch_size`,
sorted by length by the task's predict); the model runs on one worker thread, off the event loop, in
inference mode, fed by a bounded queue (full: 503 with Retry-After). Requests are UTF-8 JSON sent as
application/json, at most `max_body_bytes` (1 MiB) with at most `max_items` (64) inputs. Every error, a bad request
or a fault, is one JSON object, {"error": {"message": ...}}, and the server goes on; SIGTERM lets the requests in
flight finish, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from .. import models
from ..common import runs
from ..common.errors import UserError
from ..inference.prediction import predict_rows
from ..inference.saved import LoadedRun, load_run

log = logging.getLogger("llmtune.serve")


@dataclass
class Settings:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 512  # waiting inputs; beyond it requests get 503
    max_batch_tokens: int | None = None  # padded tokens per forward pass; None: CPU_BATCH_TOKENS on a CPU, no limit
    max_items: int = 64  # inputs per request
    max_body_bytes: int = 1 << 20  # a request body, in bytes (1 MiB: about 400 pages of text)
    api_key: str | None = field(default=None, repr=False)  # never logged
    backend: str = "torch"  # what runs the model: torch, or onnx (ONNX Runtime, for an export)


# On a CPU, padding costs as much as text: a batch of 32 random SST-2 sentences ran 1.35x faster through MiniLM
# cut by length into forward passes of at most 512 padded tokens than in one pass (benchmarks/serve_load.py).
# A GPU has compute to spare, so there the whole batch goes in one pass.
CPU_BATCH_TOKENS = 512


class Refused(Exception):
    """A request the server answers with an error status and one message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------------------------------------- requests


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Strict):
    inputs: str | dict[str, Any] | list[str | dict[str, Any]] = Field(
        description="A text, a mapping of the task's inputs (e.g. question and context), or a list of them."
    )


class Sampling(Strict):
    """What OpenAI's completion endpoints accept and llmtune honours (the rest must keep its default)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    user: str | None = None
    stream_options: dict | None = None

    def generation(self, default_tokens: int) -> dict:
        settings = {"max_new_tokens": self.max_tokens or default_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            settings.update(temperature=self.temperature, top_p=self.top_p)
        return settings

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: str | list[str]


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)


# ---------------------------------------------------------------------------------------------- the engine


@dataclass
class Job:
    """One input waiting for the model. Jobs with the same key run as one batch."""

    key: tuple
    payload: Any
    future: asyncio.Future
    stream: asyncio.Queue | None = None  # streamed generation: text pieces, then None


class Engine:
    """The bounded queue and the one worker thread that runs the model."""

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


def with_adapter_merged(loaded: LoadedRun) -> LoadedRun:
    """A LoRA or IA3 adapter folded into the base weights in memory (the files stay as they are): generation
    with SmolLM2-135M ran 1.3x faster merged on 2 CPU cores. Prefix tuning's virtual tokens cannot fold."""
    model = loaded.model
    if not hasattr(model, "peft_config") or loaded.recipe.method.type == "prefix_tuning":
        return loaded
    return replace(loaded, model=model.merge_and_unload())


# ---------------------------------------------------------------------------------------------- the app


def create_app(loaded: LoadedRun, settings: Settings) -> FastAPI:
    """The FastAPI application serving `loaded`."""
    engine = Engine(with_adapter_merged(loaded), settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.task = asyncio.create_task(engine.run())
        yield
        engine.task.cancel()
        engine.worker.shutdown(wait=True)

    app = FastAPI(title="llmtune serve", description=f"{loaded.task.name} run {describe(loaded)}", lifespan=lifespan)
    app.state.engine = engine
    app.state.expected = expected_inputs(loaded)
    install_guards(app, settings)
    causal = loaded.task.auto_class == "AutoModelForCausalLM"

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(loaded)]}

    @app.post("/v1/predict")
    async def predict(body: PredictRequest, request: Request) -> dict:
        inputs = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        if not inputs:
            raise Refused(400, "inputs: empty list; expected at least one input")
        if len(inputs) > settings.max_items:
            raise Refused(413, f"inputs: {len(inputs)} items; at most {settings.max_items} per request")
        rows = []
        for number, value in enumerate(inputs, 1):
            try:
                rows.append(loaded.task.input_row(value, number))
            except UserError as error:
                raise Refused(400, str(error)) from None
        answers = await engine.submit(("predict",), rows)
        request.state.batch_size = max(size for _, size in answers)
        results = []
        for row, (prediction, _) in zip(rows, answers):
            prediction["truncated"] = loaded.task.input_truncated(row, loaded.tokenizer, engine.max_length)
            results.append(prediction)
        return {"predictions": results}

    if causal:
        add_openai_routes(app, loaded, engine)
    return app


def expected_inputs(loaded: LoadedRun) -> dict[str, str]:
    """What the request fields with several accepted shapes take, in words, for the errors `explain` writes."""
    fields = list(loaded.task.input_columns())
    if len(fields) == 1:
        inputs = "a string or a list of strings"
    else:
        inputs = f"an object with {' and '.join(fields)}, or a list of them"
    return {"inputs": inputs, "prompt": "a string or a list of strings"}


def describe(loaded: LoadedRun) -> str:
    recipe = loaded.recipe
    return f"{loaded.run_dir or recipe.model.name} ({recipe.method.type} on {recipe.model.name})"


def model_card(loaded: LoadedRun) -> dict:
    """/v1/models' entry: OpenAI's fields, and what the run is."""
    metrics = {}
    if loaded.run_dir is not None and (loaded.run_dir / "metrics.json").is_file():
        metrics = json.loads((loaded.run_dir / "metrics.json").read_text())
    return {
        "id": model_id(loaded),
        "object": "model",
        "created": int(time.time()),
        "owned_by": "llmtune",
        "task": loaded.task.name,
        "base_model": loaded.recipe.model.name,
        "method": loaded.recipe.method.type,
        "metrics": {split: values for split, values in metrics.items() if split not in ("train", *runs.AUDIT_ENTRIES)},
    }


def model_id(loaded: LoadedRun) -> str:
    return loaded.run_dir.name if loaded.run_dir is not None else loaded.recipe.model.name


def install_guards(app: FastAPI, settings: Settings) -> None:
    """The API key, the body size limit, one JSON shape for every error, and one access-log line per request."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        request.state.batch_size = 0
        response = refusal(request, settings) or await body_refusal(request) or await call_next(request)
        latency = 1000 * (time.perf_counter() - started)
        log.info(
            '%s "%s %s" %d %.1f ms batch=%d',
            request.client.host if request.client else "-",
            request.method,
            request.url.path,
            response.status_code,
            latency,
            request.state.batch_size,
        )
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal error; the server log has the details")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # 404, 405: Starlette's words
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        expected = getattr(app.state, "expected", {})
        return error_response(400 if error.errors()[0]["type"] == "json_invalid" else 422, explain(error, expected))


def refusal(request: Request, settings: Settings) -> JSONResponse | None:
    """The answer to a request refused before it reaches an endpoint, or None."""
    if settings.api_key is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(
                401, "missing or wrong API key; send Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"}
            )
    if request.method == "POST":
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return error_response(411, "the request needs a Content-Length header")
        if int(length) > settings.max_body_bytes:
            return error_response(413, f"the body has {int(length):,} bytes; at most {settings.max_body_bytes:,}")
    return None


async def body_refusal(request: Request) -> JSONResponse | None:
    """The answer to a POST body that is not UTF-8 JSON sent as application/json, or None. FastAPI would answer
    these in its own shape (`detail`), or read a JSON text sent as text/plain as a string and say only that
    it is not an object; each gets one line here that says what was expected."""
    if request.method != "POST":
        return None
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        got = f"Content-Type {media}" if media else "no Content-Type"
        return error_response(415, f"the body must be JSON sent with Content-Type: application/json; got {got}")
    body = await request.body()  # bounded: refusal() checked its Content-Length
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return error_response(
            400,
            f"the body is not valid UTF-8 (byte 0x{body[error.start]:02x} at offset {error.start}); "
            "send JSON encoded as UTF-8",
        )
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return error_response(
            400, f"the body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        )
    return None


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def explain(error: RequestValidationError, expected: dict[str, str] | None = None) -> str:
    """The first problem of a request body, as one line: where and what was expected.

    `expected` says what a field takes in words (`inputs`: "a string or a list of strings"): pydantic names
    one member of a union (`inputs.str: Input should be a valid string`), which reads as if only that one fit.
    """
    # Of a union's errors, the deepest is about the member the value came closest to (a list, and its item 1).
    first = max(error.errors(), key=lambda problem: len(problem["loc"]))
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'syntax error')})"
    path = [part for part in first["loc"][1:] if not is_union_member(part)]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".") or "body"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if first["type"] == "missing":
        return f"{where}: missing field"
    if path and (expected or {}).get(path[0]):
        return f"{where}: got {json_kind(first.get('input'))}; {path[0]} takes {expected[path[0]]}"
    if where == "body":
        return f"the body must be a JSON object, got {json_kind(first.get('input'))}"
    return f"{where}: {first['msg']}"


def is_union_member(part) -> bool:
    """pydantic's tag for the member of a union an error is about, e.g. `str` or `list[union[str,dict[str,any]]]`."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def json_kind(value) -> str:
    """What a JSON value is, for people: `a number (5)`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


# ---------------------------------------------------------------------------------------------- OpenAI


def add_openai_routes(app: FastAPI, loaded: LoadedRun, engine: Engine) -> None:
    """/v1/completions and /v1/chat/completions for a causal LM, as OpenAI's API shapes them."""
    tokenizer = loaded.tokenizer
    default_tokens = 256

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if not prompts or any(not isinstance(p, str) or not p for p in prompts):
            raise Refused(400, "prompt: expected a non-empty text (or a list of them)")
        if len(prompts) > engine.settings.max_items:
            raise Refused(413, f"prompt: {len(prompts)} items; at most {engine.settings.max_items} per request")
        encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        return await answer(request, body, encoded, "text_completion", chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if not getattr(tokenizer, "chat_template", None):
            raise Refused(400, "this model's tokenizer has no chat template; use /v1/completions")
        messages = [message.model_dump() for message in body.messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        body.max_tokens = body.max_completion_tokens or body.max_tokens
        return await answer(
            request, body, [tokenizer(text, add_special_tokens=False)["input_ids"]], "chat.completion", chat=True
        )

    async def answer(request: Request, body: Sampling, prompts: list[list[int]], kind: str, chat: bool):
        limit = models.effective_max_length(loaded.model.config, 1 << 20)  # the model's positions, prompt included
        for ids in prompts:
            if len(ids) >= limit:
                raise Refused(400, f"the prompt has {len(ids)} tokens; this model takes at most {limit - 1}")
        generation = body.generation(default_tokens)
        generation["max_new_tokens"] = min(generation["max_new_tokens"], limit - max(map(len, prompts)))
        settings = {"generation": generation, "stops": body.stops(), "seed": body.seed}
        created, name = int(time.time()), body.model or model_id(loaded)
        prefix = "chatcmpl-" if chat else "cmpl-"
        if body.stream:
            if len(prompts) > 1:
                raise Refused(400, "stream: one prompt per streamed request")
            jobs = await engine.submit(("stream",), [(prompts[0], settings)], stream=True)
            request.state.batch_size = 1
            events = stream_events(jobs[0], f"{prefix}{uuid.uuid4().hex}", created, name, chat)
            return StreamingResponse(events, media_type="text/event-stream")
        key = ("generate", json.dumps(settings, sort_keys=True))
        answers = await engine.submit(key, [(ids, settings) for ids in prompts])
        request.state.batch_size = max(size for _, size in answers)
        return completion_body([answer for answer, _ in answers], prompts, kind, created, name, chat)


def completion_body(answers: list, prompts: list[list[int]], kind: str, created: int, name: str, chat: bool) -> dict:
    """OpenAI's (chat) completion object for the generated (text, finish reason, tokens used) of each prompt."""
    choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
    for index, (text, reason, used) in enumerate(answers):
        content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
        choices.append({"index": index, **content, "finish_reason": reason})
        usage["prompt_tokens"] += len(prompts[index])
        usage["completion_tokens"] += used
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    prefix = "chatcmpl-" if chat else "cmpl-"
    return {
        "id": f"{prefix}{uuid.uuid4().hex}",
        "object": kind,
        "created": created,
        "model": name,
        "choices": choices,
        "usage": usage,
    }


async def stream_events(job: Job, ident: str, created: int, name: str, chat: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, then `data: [DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return (
            "data: "
            + json.dumps({"id": ident, "object": kind, "created": created, "model": name, "choices": [choice]})
            + "\n\n"
        )

    if chat:
        yield chunk(None, None, first=True)
    while (piece := await job.stream.get()) is not None:
        yield chunk(piece, None)
    text, reason, _ = (await job.future)[0]
    yield chunk(None, reason)
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------- running it


def serve(loaded: LoadedRun, host: str, port: int, settings: Settings, echo=print) -> None:
    """Serve until SIGINT / SIGTERM; the requests in flight are answered before it exits."""
    import datasets
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    datasets.disable_progress_bars()  # a "Tokenizing" bar per batch would bury the access log
    app = create_app(loaded, settings)
    echo(
        f"serving {describe(loaded)}, task {loaded.task.name}, backend {settings.backend}, on http://{host}:{port} "
        f"(batches of up to {settings.max_batch_size} inputs, {settings.max_wait_ms:g} ms wait)"
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=60, lifespan="on"
    )
    uvicorn.Server(config).run()


def load_for_serving(target: str, backend: str = "auto", overrides=()) -> tuple[LoadedRun, str]:
    """The model to serve, and the backend that runs it: torch, or onnx (ONNX Runtime) for a directory written by
    llmtune export; "auto" takes the one the directory holds.

    Raises:
        UserError: an unknown backend, or one the directory does not hold; what load_run raises.
    """
    folder = Path(target)
    exported = folder.is_dir() and models.onnx_file(folder) is not None
    if backend not in ("auto", "torch", "onnx"):
        raise UserError(f"--backend {backend}: unknown; expected torch or onnx")
    if backend == "onnx" and not exported:
        raise UserError(f"--backend onnx: {target} holds no ONNX model; write one with llmtune export RUN -o DIR")
    if backend == "torch" and exported:
        raise UserError(
            f"--backend torch: {target} is an ONNX export; serve it with --backend onnx or the run it came from"
        )
    loaded = load_run(target, overrides)
    onnx = loaded.run_dir is not None and models.onnx_file(loaded.run_dir) is not None  # also a pulled export
    return loaded, "onnx" if onnx else "torch"


def api_key_from(variable: str | None) -> str | None:
    """The API key held in an environment variable (named on the command line, so the key never is).

    Raises:
        UserError: the variable is not set or empty.
    """
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise UserError(f"--api-key-env {variable}: the environment variable is not set (or empty)")
    return key
