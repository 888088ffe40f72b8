"""The HTTP side of `llmtune serve`: the server's limits, the request bodies it accepts, the guards every request
passes (API key, body size, UTF-8 JSON) and the one JSON shape of every error, with the problem said in one line."""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

log = logging.getLogger("llmtune.serve")  # the server's log (access lines, faults)


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


class Refused(Exception):
    """A request the server answers with an error status and one message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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
