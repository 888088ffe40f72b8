"""Prompt -> completion fine-tuning of causal (decoder-only) language models.

The pieces every generative task shares: prompt templates, tokenization into `input_ids` + `labels`
with the loss only on completion tokens, packing of short examples into full rows, the completion
loss, and left-padded batched generation that returns only the new tokens (with the model's confidence in
them, which encoder-decoder generation records the same way).

A template is Python `str.format` text whose fields name data columns, plus the completion slot
`{completion}` at its end: `"Question: {question}\\nAnswer: {completion}"`. Everything before the slot
is the prompt; the task's target text (plus EOS) is the completion the model learns to write.
"""

from __future__ import annotations

import functools
import inspect
import string

from ..common import sharding
from ..common.errors import UserError
from ..common.lazy import F, torch, transformers

COMPLETION = "completion"
IGNORE = -100


# ------------------------------------------------------------------------------------------ templates


def template_fields(template: str) -> list[str]:
    """The field names of a template, in order.

    Raises:
        ValueError: not valid `str.format` syntax, a positional `{}` field, a format spec or conversion,
            or no `{completion}` slot at the very end.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"not a valid template ({exc}); write fields as {{column}} and literal braces as {{{{ and }}}}"
        ) from None
    fields = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or name.isdigit():
            raise ValueError("positional fields ({} or {0}) are not allowed; name a column, e.g. {question}")
        if spec or conversion:
            raise ValueError(f"field {{{name}}} has a format spec or conversion; write plain {{{name}}}")
        if not name.isidentifier() and not all(part.isidentifier() for part in name.split(" ")):
            raise ValueError(f"field {{{name}}} is not a column name")
        fields.append(name)
    if COMPLETION not in fields:
        raise ValueError(f"has no {{{COMPLETION}}} slot; end the template with it, e.g. 'Answer: {{{COMPLETION}}}'")
    if fields.count(COMPLETION) > 1 or not template.rstrip().endswith("{" + COMPLETION + "}"):
        raise ValueError(
            f"the {{{COMPLETION}}} slot must come once, at the end: the model writes everything after the prompt"
        )
    return fields


def prompt_columns(template: str) -> list[str]:
    """The data columns a template reads (every field but the completion slot)."""
    return [name for name in dict.fromkeys(template_fields(template)) if name != COMPLETION]


def check_template_columns(template: str, key: str, columns: list[str], where: str) -> None:
    """Every field of the template must be a column of the data.

    Raises:
        UserError: naming the recipe key, the missing column and the available columns.
    """
    columns = list(dict.fromkeys(columns))
    for name in prompt_columns(template):
        if name not in columns:
            raise UserError(
                f"{where}: {key} references column '{name}', which the data does not have; "
                f"available columns: {', '.join(columns)}. "
                f"Rename a column to '{name}' with data.columns ({{name_in_data: {name}}}) or change the template"
            )


def render_prompt(template: str, row: dict, tokenizer=None, chat: bool = False) -> tuple[str, str]:
    """(prompt text, text to put before the completion).

    The space before the slot (`Answer: {completion}`) moves to the completion, so the prompt ends
    at `Answer:` and the completion starts with ` Paris`: how BPE tokenizers split the joined text.
    With `chat`, the prompt becomes the user turn of the tokenizer's chat template, generation prompt
    included, and the completion is the assistant's reply.
    """
    text = template[: template.rindex("{" + COMPLETION + "}")]
    prompt = text.format(**{name: row[name] for name in prompt_columns(template)})
    if chat:
        messages = [{"role": "user", "content": prompt.strip()}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), ""
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped) :]


# ------------------------------------------------------------------------------------------ tokens


def check_tokenizer(tokenizer, model_name: str, chat: bool) -> None:
    """Generative fine-tuning needs an EOS token (appended to completions so the model learns to stop)
    and, when asked for, a chat template.

    Raises:
        UserError: one line saying what is missing and what to do.
    """
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"model.name: the tokenizer of {model_name} has no EOS token; "
            "generative fine-tuning appends it to every completion so the model learns where to stop. "
            "Use a checkpoint whose tokenizer defines eos_token"
        )
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"task.chat_template: the tokenizer of {model_name} has no chat template; set task.chat_template: false"
        )


def encode_example(
    tokenizer,
    prompt: str,
    completion: str | None,
    max_length: int,
    chat: bool,
    reserve: int = 0,
    completion_limit: int | None = None,
) -> dict:
    """`input_ids`, `labels` (-100 on prompt tokens) and `prompt_length` for one example.

    The completion is followed by EOS. Too long an example loses the start of its prompt (the end,
    next to the completion, matters most); the completion keeps at most `max_length - 1` tokens, and
    at most `completion_limit` tokens EOS included when that is given (then `completion_truncated`
    says whether it was cut). Without a completion (prediction), the prompt keeps room for `reserve`
    generated tokens.
    """
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (e.g. BOS).
    prompt_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    if prompt_ids and prompt_ids[-1] == tokenizer.eos_token_id and not chat:
        prompt_ids = prompt_ids[:-1]  # tokenizers that append EOS to every text: the prompt must not end the sequence
    completion_ids = []
    if completion is not None:
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        truncated = completion_limit is not None and len(completion_ids) + 1 > completion_limit
        if truncated:
            completion_ids = completion_ids[: max(completion_limit - 1, 0)]
        completion_ids = (completion_ids + [tokenizer.eos_token_id])[: max_length - 1]
    room = max_length - (len(completion_ids) if completion is not None else min(reserve, max_length - 1))
    prompt_ids = prompt_ids[-room:] if len(prompt_ids) > room else prompt_ids
    input_ids = prompt_ids + completion_ids
    # The first token is never predicted; -100 there also keeps a packed row from predicting an example's
    # first token from the previous example's last.
    labels = [IGNORE] * len(prompt_ids) + completion_ids
    labels[0] = IGNORE
    features = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": labels,
        "prompt_length": len(prompt_ids),
    }
    if completion_limit is not None:
        features["completion_truncated"] = completion is not None and truncated
    return features


# ------------------------------------------------------------------------------------------ loss


def pack(batch: dict, max_length: int, pad_token_id: int) -> dict:
    """The batch's examples packed into as few rows of at most `max_length` tokens as fit (first fit, longest first).

    Each example keeps its own position ids (restarting at 0) and there is no attention mask:
    transformers then finds the example boundaries from the position ids and lets tokens attend only
    within their own example (the flattening approach of `DataCollatorWithFlattening`), so no example
    sees another and the per-token losses equal the unpacked ones. Examples never split across rows.
    """
    mask = batch["attention_mask"].bool()
    examples = [(batch["input_ids"][i][mask[i]], batch["labels"][i][mask[i]]) for i in range(len(mask))]
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i][0])):
        size = len(examples[i][0])
        row = next((r for r, total in enumerate(used) if total + size <= max_length), None)
        if row is None:
            rows.append([])
            used.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        used[row] += size
    width = max(used)
    device = batch["input_ids"].device
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long, device=device)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, example_labels = examples[i]
            input_ids[r, start : start + len(ids)] = ids
            labels[r, start : start + len(ids)] = example_labels
            position_ids[r, start : start + len(ids)] = torch.arange(len(ids), device=device)
            start += len(ids)
        # Padding at the row's end is one more sequence starting at position 0: nothing before it attends to it.
        position_ids[r, start:] = torch.arange(width - start, device=device)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def completion_labels(batch: dict) -> torch.Tensor:
    """The batch's labels with every prompt and padding position set to -100, whatever the labels say there.

    The mask comes from `prompt_length` and the attention mask (either padding side), so the loss
    cannot count a prompt token even if a label was put on it.
    """
    mask = batch["attention_mask"].bool()
    position = batch["attention_mask"].cumsum(-1) - 1
    completion = mask & (position >= batch["prompt_length"].unsqueeze(-1))
    return torch.where(completion, batch["labels"], torch.full_like(batch["labels"], IGNORE))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed negative log-likelihood (natural log) of its target tokens, and their count."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1), (shifted_labels != IGNORE).sum(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token: a left-padded row gets the positions it has unpadded."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def completion_loss(
    model, batch: dict, packing_length: int | None = None, pad_token_id: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy per completion token of the batch; prompt tokens and padding do not count.

    With `packing_length`, the examples are packed into rows of that many tokens first (same loss,
    fewer padded positions).
    """
    batch = {**batch, "labels": completion_labels(batch)}
    if packing_length:
        inputs = pack(batch, packing_length, pad_token_id)
        labels = inputs.pop("labels")
    else:
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "position_ids": position_ids(batch["attention_mask"]),
        }
        labels = batch["labels"]
    # No cache: transformers looks for packed sequences in the position ids only when there is none.
    if not accepts_logits_to_keep(model):
        nll, count = token_losses(model(**inputs, use_cache=False).logits, labels)
        return nll.sum() / count.sum().clamp(min=1)
    # Logits only where a completion token is predicted: the prompt's positions would each cost a vocabulary-wide
    # row (on XSum-like prompts most of the sequence, a fifth of a small model's compute and gigabytes of memory).
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE
    logits = model(**inputs, use_cache=False, logits_to_keep=predicts).logits  # (positions kept, vocabulary)
    targets = labels[:, 1:][predicts[:, :-1]]
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(targets.numel(), 1)


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under its wrappers (DDP, torch.compile, peft) computes logits for a mask of positions."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return slices_by_mask(type(base))


@functools.cache
def slices_by_mask(model_class: type) -> bool:
    """Whether the class's forward takes `logits_to_keep` as a (batch, sequence) mask: models that slice through
    transformers' `slice_logits_to_keep` (5.21 and later); older code indexed the sequence axis with it."""
    try:
        source = inspect.getsource(model_class.forward)
    except (OSError, TypeError):  # no source to read (a compiled or dynamically made class)
        return False
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters and "slice_logits_to_keep" in source


# ------------------------------------------------------------------------------------------ generation


def generate(model, prompts: list[list[int]], tokenizer, max_new_tokens: int, num_beams: int = 1, **options):
    """Greedy (or beam) continuations of token-id prompts, batched with left padding.

    Returns (new tokens, confidence): the new tokens only, one row per prompt, cut at EOS and padded with -1
    to `max_new_tokens` columns (a fixed width, so batches concatenate); and per prompt the geometric mean
    probability of the tokens written (see `generate_with_confidence`). `options` go to `generate`.
    """
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    device = next(model.parameters()).device
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    settings = {
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **options,
    }
    sequences, confidence = generate_with_confidence(model, inputs, settings, tokenizer.eos_token_id, start=width)
    result = torch.full((len(prompts), max_new_tokens), -1, dtype=torch.long)
    for row, tokens in enumerate(sequences[:, width:].tolist()):
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        result[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return result, confidence


def decode(tokenizer, rows: torch.Tensor) -> list[str]:
    """Text of `generate`'s rows (the -1 padding dropped, special tokens skipped, outer spaces stripped)."""
    return [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip() for row in rows.tolist()]


def generate_with_confidence(model, inputs: dict, settings: dict, eos_token_id: int, start: int):
    """`generate` without sampling; returns (sequences on the CPU, confidence per sequence).

    `start`: where the generated tokens begin in a sequence (after a causal LM's prompt; after an encoder-decoder's
    decoder start token).

    The confidence is the geometric mean of the probabilities of the generated tokens up to and including
    EOS, after the generation constraints (e.g. no_repeat_ngram_size). It is recorded while generating, a
    few numbers per step (keeping transformers' `output_scores` would hold a vocabulary-wide row per step).
    """
    recorder = StepScores(normalize=settings.get("num_beams", 1) == 1, k=2 * settings.get("num_beams", 1))
    generator = getattr(model, "module", model)  # DistributedDataParallel hides generate()
    output = generator.generate(
        **inputs,
        **settings,
        synced_gpus=sharding.sharded(generator),
        do_sample=False,
        return_dict_in_generate=True,
        logits_processor=transformers.LogitsProcessorList([recorder]),
    )
    new_tokens = output.sequences[:, start:].cpu()
    steps = min(new_tokens.shape[1], len(recorder.values))
    total, count = torch.zeros(len(new_tokens), dtype=torch.float64), torch.zeros(len(new_tokens))
    if steps == 0:
        return output.sequences.cpu(), torch.ones(len(new_tokens))
    beams = getattr(output, "beam_indices", None)
    rows = beams[:, :steps].cpu() if beams is not None else torch.arange(len(new_tokens)).unsqueeze(1).expand(-1, steps)
    values, indices = (
        torch.stack(recorder.values[:steps], 1),
        torch.stack(recorder.indices[:steps], 1),
    )  # [rows, steps, k]
    for example, (tokens, sources) in enumerate(zip(new_tokens[:, :steps].tolist(), rows.tolist())):
        for step, (token, source) in enumerate(zip(tokens, sources)):
            if source < 0:  # a finished beam hypothesis
                break
            found = (indices[source, step] == token).nonzero()
            if len(found):
                total[example] += float(values[source, step, found[0, 0]])
                count[example] += 1
            if token == eos_token_id:
                break
    return output.sequences.cpu(), torch.exp(total / count.clamp(min=1)).float()


class StepScores:
    """A logits processor (run after the generation constraints) that records each row's best k log-probabilities
    per step, so the probability of every chosen token can be looked up afterwards. Greedy search passes raw
    scores (normalized here); beam search passes log-probabilities already."""

    def __init__(self, normalize: bool, k: int):
        self.normalize, self.k = normalize, k
        self.values: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        log_probs = scores.float().log_softmax(-1) if self.normalize else scores.float()
        top = log_probs.topk(min(self.k, log_probs.shape[-1]), -1)
        self.values.append(top.values.cpu())
        self.indices.append(top.indices.cpu())
        return scores
