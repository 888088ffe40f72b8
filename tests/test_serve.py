"""`llmtune serve` as users and their tools meet it: a real server in a subprocess on 127.0.0.1, driven with httpx,
and its OpenAI-compatible endpoints with the official `openai` client. Answers equal `llmtune predict`; bad
requests get a 4xx and one JSON error while the server goes on; the API key guards it; SIGTERM drains."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import RECIPES, ROOT, write_recipe, write_sentiment_files

from llmtune import load_recipe, predict, train


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`llmtune serve TARGET ARGS` in a subprocess, until stopped; its stderr is kept (the access log)."""

    def __init__(self, target, *args, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "llmtune", "serve", str(target), "--port", str(self.port), *map(str, args)]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmtune-serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", headers=self.auth(), timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {self.output()}")
            time.sleep(0.3)

    def auth(self) -> dict:
        return {}

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def classifier_run(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-classifier")
    files = write_sentiment_files(folder, repeat=4)
    recipe = load_recipe(write_recipe(folder / "r.yaml", tiny_bert, files), ["training.learning_rate=1e-3"])
    return train(recipe, output_dir=folder / "run").run_dir


@pytest.fixture(scope="module")
def classifier(classifier_run):
    server = Server(classifier_run, "--max-wait-ms", "50")
    yield server
    server.stop()


# --------------------------------------------------------------------------- /v1/predict


def test_predict_answers_as_llmtune_predict_does(classifier, classifier_run):
    texts = ["a wonderful, moving film", "a waste of money", "dull and far too long"]
    one = httpx.post(classifier.url + "/v1/predict", json={"inputs": texts[0]}).json()["predictions"]
    many = httpx.post(classifier.url + "/v1/predict", json={"inputs": texts}).json()["predictions"]
    expected = predict(classifier_run, texts)
    for served, local in zip([one[0], *many], [expected[0], *expected]):
        assert served.pop("truncated") is False
        served["index"] = local["index"] = 0  # rows are numbered per request
        assert served.keys() == local.keys() and served["predicted"] == local["predicted"]
        assert served["probabilities"] == pytest.approx(local["probabilities"], abs=1e-5)


def test_a_long_input_is_cut_as_in_training_and_says_so(classifier):
    row = httpx.post(classifier.url + "/v1/predict", json={"inputs": "good " * 500}).json()["predictions"][0]
    assert row["truncated"] is True and row["predicted"] in ("negative", "positive")


def test_concurrent_requests_are_answered_in_one_batch(classifier):
    """Requests within max_wait_ms of each other share a forward pass: the access log says batch=N."""
    results = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                httpx.post(classifier.url + "/v1/predict", json={"inputs": f"film number {i}"}, timeout=60).status_code
            )
        )
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    time.sleep(0.5)
    sizes = [int(line.rsplit("batch=", 1)[1]) for line in classifier.output().splitlines() if "/v1/predict" in line]
    assert max(sizes) > 1, sizes


def test_a_lone_client_is_not_kept_waiting_for_a_batch(classifier_run):
    """max_wait_ms gathers concurrent requests; one client sending one request at a time gets no added wait."""
    server = Server(classifier_run, "--max-wait-ms", "1000")
    try:
        times = []
        for _ in range(4):
            start = time.perf_counter()
            assert httpx.post(server.url + "/v1/predict", json={"inputs": "fine"}, timeout=60).status_code == 200
            times.append(time.perf_counter() - start)
    finally:
        server.stop()
    assert max(times[1:]) < 0.5, times  # the first may wait: the server cannot know yet that it is alone


def test_a_batch_cut_by_padded_tokens_answers_as_one_pass_does(classifier_run):
    """On a CPU the server cuts a batch by length into passes of at most --max-batch-tokens padded tokens."""
    from llmtune.inference.prediction import predict_rows
    from llmtune.inference.saved import load_run

    loaded = load_run(classifier_run)
    texts = ["bad", "a wonderful, moving and beautifully acted film", "dull", "far too long and far too loud for me"]
    rows = [loaded.task.input_row(text, number) for number, text in enumerate(texts, 1)]
    passes = []
    hook = loaded.model.register_forward_hook(lambda module, args, kwargs: passes.append(1))
    whole = predict_rows(loaded.task, loaded.model, loaded.tokenizer, rows, 64, batch_size=len(rows))
    assert len(passes) == 1
    cut = predict_rows(loaded.task, loaded.model, loaded.tokenizer, rows, 64, len(rows), max_tokens=16)
    hook.remove()
    assert len(passes) > 2
    assert [row["predicted"] for row in cut] == [row["predicted"] for row in whole]
    for a, b in zip(cut, whole):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_models_health_and_docs(classifier, classifier_run):
    assert httpx.get(classifier.url + "/health").json() == {"status": "ok"}
    model = httpx.get(classifier.url + "/v1/models").json()["data"][0]
    saved = json.loads((classifier_run / "metrics.json").read_text())
    assert model["task"] == "classification" and model["method"] == "full" and model["metrics"]["test"] == saved["test"]
    assert set(model["metrics"]) == {"validation", "test"}  # the splits' metrics; not the training summary or audits
    assert httpx.get(classifier.url + "/docs").status_code == 200
    assert "/v1/predict" in httpx.get(classifier.url + "/openapi.json").json()["paths"]


JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    # (what, how to send it, status, a fragment of the one error message)
    ("not JSON", {"content": b"{inputs: nope", "headers": JSON}, 400, "not valid JSON: Expecting property name"),
    ("JSON broken on line 3", {"content": b'{\n "inputs": "a",\n}', "headers": JSON}, 400, "at line 3, column 1"),
    ("not UTF-8", {"content": '{"inputs": "café"}'.encode("latin-1"), "headers": JSON}, 400, "not valid UTF-8"),
    (
        "JSON sent as text/plain",
        {"content": b'{"inputs": "a"}', "headers": {"content-type": "text/plain"}},
        415,
        "must be JSON sent with Content-Type: application/json; got Content-Type text/plain",
    ),
    ("a form", {"data": {"inputs": "a"}}, 415, "application/json; got Content-Type application/x-www-form-urlencoded"),
    ("no content type", {"content": b'{"inputs": "a"}'}, 415, "application/json; got no Content-Type"),
    ("a JSON list", {"json": ["a film"]}, 422, "the body must be a JSON object, got a list"),
    ("no inputs", {"json": {}}, 422, "inputs: missing field"),
    ("an unknown field", {"json": {"inputs": "a", "temperature": 1}}, 422, "temperature: unknown field"),
    ("a number as input", {"json": {"inputs": 42}}, 422, "inputs: got a number (42); inputs takes a string or a list"),
    ("an empty text", {"json": {"inputs": ""}}, 400, "input row 1: missing or empty 'text'"),
    ("blank text", {"json": {"inputs": "   "}}, 400, "missing or empty 'text'"),
    ("an empty list", {"json": {"inputs": []}}, 400, "inputs: empty list"),
    ("too many items", {"json": {"inputs": ["a"] * 65}}, 413, "at most 64 per request"),
    ("an oversized body", {"json": {"inputs": "a" * 2_000_000}}, 413, "at most 1,048,576"),
    ("a mapping without the text", {"json": {"inputs": {"question": "why?"}}}, 400, "missing or empty 'text'"),
    ("a null inside a list", {"json": {"inputs": ["a film", None]}}, 422, "inputs[1]: got null; inputs takes a string"),
    ("a list nested in a list", {"json": {"inputs": [["a film"]]}}, 422, "inputs[0]: got a list; inputs takes"),
    ("completions on a classifier", {"url": "/v1/completions", "json": {"prompt": "Hi"}}, 404, "Not Found"),
    ("an unknown path", {"url": "/v1/nothing", "json": {}}, 404, "Not Found"),
    ("GET on predict", {"method": "GET"}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("what", "request_", "status", "fragment"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_requests_get_one_clear_error_and_the_server_goes_on(what, request_, status, fragment, classifier):
    """Every error in the documented shape, {"error": {"message": ...}}, saying what was expected."""
    request_ = dict(request_)
    url = classifier.url + request_.pop("url", "/v1/predict")
    response = httpx.request(request_.pop("method", "POST"), url, timeout=30, **request_)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and fragment in body["error"]["message"], body
    assert httpx.post(classifier.url + "/v1/predict", json={"inputs": "a fine film"}).status_code == 200


def test_a_full_queue_answers_503_and_the_request_limits_are_settable(classifier_run):
    limits = ("--max-inputs", "3", "--max-body-bytes", "2000")
    server = Server(classifier_run, "--max-queue", "2", "--max-wait-ms", "2000", *limits)
    try:
        statuses = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(
                    httpx.post(server.url + "/v1/predict", json={"inputs": ["a", "b"]}, timeout=60)
                )
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        refused = [r for r in statuses if r.status_code == 503]
        assert (
            refused
            and refused[0].headers["retry-after"] == "1"
            and "queue is full" in refused[0].json()["error"]["message"]
        )
        assert any(r.status_code == 200 for r in statuses)
        many = httpx.post(server.url + "/v1/predict", json={"inputs": ["a"] * 4}, timeout=60)
        assert many.status_code == 413 and "inputs: 4 items; at most 3 per request" in many.json()["error"]["message"]
        large = httpx.post(server.url + "/v1/predict", json={"inputs": "a" * 3000}, timeout=60)
        assert large.status_code == 413 and "at most 2,000" in large.json()["error"]["message"]
    finally:
        server.stop()


# --------------------------------------------------------------------------- security and operations


def test_the_api_key_is_required_and_never_logged(classifier_run):
    key = "s3cret-key-0123456789"
    server = Server(classifier_run, "--api-key-env", "LLMTUNE_TEST_KEY", env={"LLMTUNE_TEST_KEY": key})
    try:
        assert httpx.post(server.url + "/v1/predict", json={"inputs": "a"}).status_code == 401
        wrong = httpx.post(server.url + "/v1/predict", json={"inputs": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = httpx.post(server.url + "/v1/predict", json={"inputs": "a"}, headers={"Authorization": f"Bearer {key}"})
        assert right.status_code == 200
    finally:
        server.stop()
    log = server.output()
    assert "/v1/predict" in log and key not in log and "s3cret" not in log


def test_the_server_binds_to_loopback_by_default(classifier):
    assert httpx.get(f"http://127.0.0.1:{classifier.port}/health").status_code == 200
    address = [line for line in classifier.output().splitlines() if line.startswith("serving ")][0]
    assert f"http://127.0.0.1:{classifier.port}" in address


def test_sigterm_answers_the_requests_in_flight_then_refuses(classifier_run):
    server = Server(classifier_run, "--max-wait-ms", "1500")
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(
            httpx.post(server.url + "/v1/predict", json={"inputs": "a film in flight"}, timeout=60)
        )
    )
    worker.start()
    time.sleep(0.5)  # the request waits in the batch window
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # while the first one is still being answered
        httpx.post(server.url + "/v1/predict", json={"inputs": "too late"}, timeout=5)
    worker.join()
    assert answers[0].status_code == 200 and answers[0].json()["predictions"][0]["predicted"]
    # uvicorn exits by the signal it drained for (as a killed process would, so supervisors read it alike).
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    server.stop()


def test_bad_serve_arguments_are_one_line(cli, classifier_run, tmp_path):
    from test_bad_input import assert_user_error

    assert_user_error(
        cli("serve", classifier_run, "--backend", "onnx"), "holds no ONNX model; write one with llmtune export"
    )
    assert_user_error(
        cli("serve", classifier_run, "--api-key-env", "LLMTUNE_NO_SUCH_VARIABLE"),
        "--api-key-env LLMTUNE_NO_SUCH_VARIABLE: the environment variable is not set",
    )
    assert_user_error(cli("serve", tmp_path), "neither a run directory")


# --------------------------------------------------------------------------- other tasks


@pytest.fixture(scope="module")
def qa_run(tiny_bert, tmp_path_factory):
    from conftest import tiny_qa_overrides

    folder = tmp_path_factory.mktemp("serve-qa")
    sets = [*tiny_qa_overrides(tiny_bert), "training.epochs=1"]
    return train(load_recipe(RECIPES / "qa.yaml", sets), output_dir=folder / "run").run_dir


def test_qa_answers_with_span_and_score_as_predict_does(qa_run):
    example = {"question": "Where is the treasure?", "context": "The treasure is buried under the old oak tree."}
    server = Server(qa_run)
    try:
        served = httpx.post(server.url + "/v1/predict", json={"inputs": example}).json()["predictions"][0]
    finally:
        server.stop()
    local = predict(qa_run, [example])[0]
    assert served["predicted"] == local["predicted"] and served["span"] == local["span"]
    assert served["score"] == pytest.approx(local["score"], abs=1e-5)


# --------------------------------------------------------------------------- a causal LM with the openai client


@pytest.fixture(scope="module")
def chat_run(tiny_llama, tmp_path_factory):
    from test_generative_seq2seq import translation_settings

    folder = tmp_path_factory.mktemp("serve-llama")
    settings = translation_settings(tiny_llama, folder / "run", "task.chat_template=true", "training.epochs=1")
    return train(load_recipe(RECIPES / "translation-gpt.yaml", settings)).run_dir


@pytest.fixture(scope="module")
def llm(chat_run):
    server = Server(chat_run, "--max-wait-ms", "50")
    yield server
    server.stop()


def test_openai_client_completes_chats_and_streams(llm, chat_run):
    from openai import OpenAI

    client = OpenAI(base_url=llm.url + "/v1", api_key="unused")
    assert [model.id for model in client.models.list().data] == [chat_run.name]
    completion = client.completions.create(model=chat_run.name, prompt="Ein Hund", max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 5 and completion.usage.prompt_tokens > 0
    chat = client.chat.completions.create(
        model=chat_run.name, messages=[{"role": "user", "content": "Ein Hund."}], max_tokens=6, temperature=0
    )
    reply = chat.choices[0].message
    assert reply.role == "assistant" and isinstance(reply.content, str)
    pieces = client.chat.completions.create(
        model=chat_run.name,
        messages=[{"role": "user", "content": "Ein Hund."}],
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in pieces)
    assert streamed == reply.content  # greedy: the same text, in pieces
    sampled = client.completions.create(
        model=chat_run.name, prompt="Ein", max_tokens=4, temperature=0.8, top_p=0.9, seed=1
    )
    assert sampled.choices[0].text is not None


def test_generation_as_llmtune_predict_writes_it(llm, chat_run):
    from test_generative_seq2seq import GERMAN

    served = httpx.post(llm.url + "/v1/predict", json={"inputs": GERMAN[0]}).json()["predictions"][0]
    assert served["predicted"] == predict(chat_run, [GERMAN[0]])[0]["predicted"]


def test_openai_bad_requests_are_one_clear_error(llm):
    cases = [
        ({"prompt": "Hi", "n": 2}, 422, "n: Input should be less than or equal to 1"),
        ({"prompt": ""}, 400, "prompt: expected a non-empty text"),
        ({"prompt": "Hi", "temperature": 5}, 422, "temperature"),
        ({"prompt": "Hi", "frequency_penalty": 1}, 422, "frequency_penalty: unknown field"),
        ({"prompt": "Hi " * 400}, 400, "this model takes at most"),
    ]
    for body, status, fragment in cases:
        response = httpx.post(llm.url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == status and fragment in response.json()["error"]["message"], response.text
    assert httpx.post(llm.url + "/v1/chat/completions", json={"messages": []}).status_code == 422
    assert httpx.post(llm.url + "/v1/completions", json={"prompt": "Ein", "max_tokens": 2}).status_code == 200
