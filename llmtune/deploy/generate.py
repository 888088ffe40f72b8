"""Free-form generation with a causal LM for the OpenAI-compatible endpoints of `llmtune serve`: prompts batched
with left padding, greedy or sampled (temperature, top_p), cut at EOS or a stop string, and streamed piece by
piece when asked. It runs on the server's model thread.
"""

from __future__ import annotations

import asyncio

from ..common.lazy import torch
from ..inference.saved import LoadedRun


def generate_texts(loaded: LoadedRun, payloads: list[tuple[list[int], dict]]) -> list[tuple[str, str, int]]:
    """(text, finish reason, completion tokens) per prompt; every payload of a call has the same settings."""
    settings = payloads[0][1]
    prompts = [ids for ids, _ in payloads]
    sequences, width = run_generate(loaded, prompts, settings)
    return [finish(loaded, tokens[width:].tolist(), settings) for tokens in sequences]


def stream_text(loaded: LoadedRun, payload: tuple[list[int], dict], queue: asyncio.Queue, loop) -> tuple[str, str, int]:
    """Generate for one prompt, putting each new piece of text on `queue` (from this thread), then None."""
    from transformers import TextStreamer

    prompt, settings = payload
    stops = settings["stops"]
    sent = [0]  # characters of the text already put on the queue

    class Pieces(TextStreamer):
        def __init__(self):
            super().__init__(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.text = ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.text += text
            cut = first_stop(self.text, stops)
            # Hold back what could be the start of a stop string until the next piece settles it.
            safe = (
                cut if cut is not None else len(self.text) - (0 if stream_end else max(map(len, stops), default=1) - 1)
            )
            if safe > sent[0]:
                loop.call_soon_threadsafe(queue.put_nowait, self.text[sent[0] : safe])
                sent[0] = safe

    try:
        sequences, width = run_generate(loaded, [prompt], settings, streamer=Pieces())
        return finish(loaded, sequences[0][width:].tolist(), settings)
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


def run_generate(loaded: LoadedRun, prompts: list[list[int]], settings: dict, streamer=None):
    """The generated sequences (prompt included, left-padded to a common width) and that width."""
    tokenizer, model = loaded.tokenizer, loaded.model
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    if settings["seed"] is not None:
        torch.manual_seed(settings["seed"])
    extra = {"stop_strings": settings["stops"], "tokenizer": tokenizer} if settings["stops"] else {}
    device = next(model.parameters()).device
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            streamer=streamer,
            **settings["generation"],
            **extra,
        )
    return output.cpu(), width


def finish(loaded: LoadedRun, tokens: list[int], settings: dict) -> tuple[str, str, int]:
    """The completion's text cut at EOS or the first stop string, why it ended, and its token count."""
    eos = loaded.tokenizer.eos_token_id
    ended = eos in tokens
    tokens = tokens[: tokens.index(eos)] if ended else tokens
    text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    cut = first_stop(text, settings["stops"])
    if cut is not None:
        return text[:cut], "stop", len(tokens)
    full = len(tokens) >= settings["generation"]["max_new_tokens"]
    return text, "length" if full and not ended else "stop", len(tokens)


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None
