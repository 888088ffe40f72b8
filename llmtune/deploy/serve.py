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

serve_http.py holds the requests' shapes and guards, serve_batcher.py the batching, serve_openai.py the OpenAI routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request

from .. import models
from ..common import runs
from ..common.errors import UserError
from ..inference.saved import LoadedRun, load_run
from .serve_batcher import Batcher
from .serve_http import PredictRequest, Refused, Settings, install_guards
from .serve_openai import add_openai_routes, model_id

log = logging.getLogger("llmtune.serve")


def with_adapter_merged(loaded: LoadedRun) -> LoadedRun:
    """A LoRA or IA3 adapter folded into the base weights in memory (the files stay as they are): generation
    with SmolLM2-135M ran 1.3x faster merged on 2 CPU cores. Prefix tuning's virtual tokens cannot fold."""
    model = loaded.model
    if not hasattr(model, "peft_config") or loaded.recipe.method.type == "prefix_tuning":
        return loaded
    return replace(loaded, model=model.merge_and_unload())


def create_app(loaded: LoadedRun, settings: Settings) -> FastAPI:
    """The FastAPI application serving `loaded`."""
    batcher = Batcher(with_adapter_merged(loaded), settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()
        batcher.worker.shutdown(wait=True)

    app = FastAPI(title="llmtune serve", description=f"{loaded.task.name} run {describe(loaded)}", lifespan=lifespan)
    app.state.batcher = batcher
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
        answers = await batcher.submit(("predict",), rows)
        request.state.batch_size = max(size for _, size in answers)
        results = []
        for row, (prediction, _) in zip(rows, answers):
            prediction["truncated"] = loaded.task.input_truncated(row, loaded.tokenizer, batcher.max_length)
            results.append(prediction)
        return {"predictions": results}

    if causal:
        add_openai_routes(app, loaded, batcher)
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
