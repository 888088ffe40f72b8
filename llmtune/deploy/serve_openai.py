"""OpenAI-compatible `/v1/completions` and `/v1/chat/completions` for a served causal LM, streamed as server-sent
events when asked."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .. import models
from ..inference.saved import LoadedRun
from .serve_batcher import Batcher, Job
from .serve_http import ChatRequest, CompletionRequest, Refused, Sampling


def add_openai_routes(app: FastAPI, loaded: LoadedRun, batcher: Batcher) -> None:
    """/v1/completions and /v1/chat/completions for a causal LM, as OpenAI's API shapes them."""
    tokenizer = loaded.tokenizer
    default_tokens = 256

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if not prompts or any(not isinstance(p, str) or not p for p in prompts):
            raise Refused(400, "prompt: expected a non-empty text (or a list of them)")
        if len(prompts) > batcher.settings.max_items:
            raise Refused(413, f"prompt: {len(prompts)} items; at most {batcher.settings.max_items} per request")
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
            jobs = await batcher.submit(("stream",), [(prompts[0], settings)], stream=True)
            request.state.batch_size = 1
            events = stream_events(jobs[0], f"{prefix}{uuid.uuid4().hex}", created, name, chat)
            return StreamingResponse(events, media_type="text/event-stream")
        key = ("generate", json.dumps(settings, sort_keys=True))
        answers = await batcher.submit(key, [(ids, settings) for ids in prompts])
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


def model_id(loaded: LoadedRun) -> str:
    """The name the served model goes by in the OpenAI API (`model`): the run directory's, else the checkpoint's."""
    return loaded.run_dir.name if loaded.run_dir is not None else loaded.recipe.model.name
