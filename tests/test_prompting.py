"""Prompt -> completion machinery: templates, the completion-only loss mask, packing, generation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtune.inference.batches import PadCollator
from llmtune.tasks import prompting

TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer: {completion}"
ROWS = [
    {
        "context": "The treasure is buried under the old oak tree.",
        "question": "Where is the treasure?",
        "answer": "under the old oak tree",
    },
    {"context": "Paris is the capital of France.", "question": "What is the capital of France?", "answer": "Paris"},
    {"context": "The cat sat on the mat.", "question": "Who sat?", "answer": "The cat"},
    {"context": "A dog runs across the meadow.", "question": "What runs?", "answer": "A dog"},
]


def load(path, attention: str = "sdpa"):
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    return model, tokenizer


def features(tokenizer, max_length: int = 64) -> list[dict]:
    encoded = []
    for row in ROWS:
        prompt, lead = prompting.render_prompt(TEMPLATE, row)
        encoded.append(prompting.encode_example(tokenizer, prompt, lead + row["answer"], max_length, chat=False))
    return encoded


def test_template_checks():
    assert prompting.prompt_columns(TEMPLATE) == ["context", "question"]
    for bad, expected in [
        ("Question: {question}\nAnswer:", "has no {completion} slot"),
        ("{completion} is the answer to {question}", "at the end"),
        ("Q: {}\nA: {completion}", "positional"),
        ("Q: {question:>10} {completion}", "format spec"),
        ("Q: {question {completion}", "not a valid template"),
    ]:
        with pytest.raises(ValueError, match=expected.replace("{", r"\{").replace("}", r"\}")):
            prompting.template_fields(bad)


def test_completion_follows_prompt_and_ends_with_eos(tiny_gpt2):
    _, tokenizer = load(tiny_gpt2)
    prompt, lead = prompting.render_prompt(TEMPLATE, ROWS[1])
    assert prompt.endswith("Answer:") and lead == " "
    example = prompting.encode_example(tokenizer, prompt, lead + "Paris", 64, chat=False)
    n = example["prompt_length"]
    assert example["input_ids"] == tokenizer(prompt + " Paris")["input_ids"] + [
        tokenizer.eos_token_id
    ]  # same tokens as the joined text
    assert example["labels"][:n] == [-100] * n
    assert example["labels"][n:] == example["input_ids"][n:] and example["labels"][-1] == tokenizer.eos_token_id
    short = prompting.encode_example(
        tokenizer, prompt, lead + "Paris", 8, chat=False
    )  # the prompt loses its start, the answer stays
    assert len(short["input_ids"]) == 8 and short["input_ids"][-3:] == example["input_ids"][-3:]


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_loss_mask(name, attention, request):
    """Done-when 3: prompt labels do not count, only completion tokens do, packed == unpacked."""
    model, tokenizer = load(request.getfixturevalue(name), attention)
    batch = PadCollator(tokenizer.pad_token_id)(features(tokenizer))
    with torch.inference_mode():
        loss = prompting.completion_loss(model, batch)

        # Changing the prompt tokens' labels (here: to the tokens themselves, as plain LM training would)
        # changes nothing.
        relabelled = {**batch, "labels": torch.where(batch["labels"] == -100, batch["input_ids"], batch["labels"])}
        prompt_positions = torch.arange(batch["input_ids"].shape[1]) < batch["prompt_length"].unsqueeze(-1)
        assert (relabelled["labels"][prompt_positions] != -100).all()
        torch.testing.assert_close(prompting.completion_loss(model, relabelled), loss, rtol=0, atol=0)

        # Only completion tokens count: the loss is the mean NLL of exactly the completion tokens, computed by hand.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        log_probs = logits.log_softmax(-1)
        nlls = []
        for row, example in enumerate(features(tokenizer)):
            for position in range(example["prompt_length"], len(example["input_ids"])):
                nlls.append(-log_probs[row, position - 1, example["input_ids"][position]])
        assert len(nlls) == sum(len(tokenizer(" " + r["answer"])["input_ids"]) + 1 for r in ROWS)  # answer tokens + EOS
        torch.testing.assert_close(loss, torch.stack(nlls).mean(), rtol=1e-5, atol=1e-6)

        # ... and a completion label does count.
        changed = {**batch, "labels": batch["labels"].clone()}
        last = int((changed["labels"][0] != -100).nonzero().max())
        changed["labels"][0, last] = (changed["labels"][0, last] + 1) % len(tokenizer)
        assert prompting.completion_loss(model, changed) != loss

        # Packed and unpacked batches: the same loss on the same examples, and fewer rows.
        packed = prompting.pack({**batch, "labels": prompting.completion_labels(batch)}, 64, tokenizer.pad_token_id)
        assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]
        torch.testing.assert_close(
            prompting.completion_loss(model, batch, packing_length=64, pad_token_id=tokenizer.pad_token_id),
            loss,
            rtol=1e-5,
            atol=1e-6,
        )

        # No cross-contamination: every example's logits in a packed row equal its logits alone.
        packed_logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        for row in range(packed["input_ids"].shape[0]):
            starts = (packed["position_ids"][row] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
            for start, end in zip(starts, starts[1:]):
                ids = packed["input_ids"][row, start:end]
                if (ids == tokenizer.pad_token_id).all():
                    continue
                alone = model(input_ids=ids.unsqueeze(0)).logits[0]
                torch.testing.assert_close(packed_logits[row, start:end], alone, rtol=1e-4, atol=1e-5)


def test_left_padded_generation_returns_only_new_tokens(tiny_llama):
    model, tokenizer = load(tiny_llama)
    prompts = [f["input_ids"][: f["prompt_length"]] for f in features(tokenizer)]
    with torch.inference_mode():
        batched, confidence = prompting.generate(model, prompts, tokenizer, max_new_tokens=6)
        for prompt, row in zip(prompts, batched):
            alone = model.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )[0, len(prompt) :].tolist()
            if tokenizer.eos_token_id in alone:
                alone = alone[: alone.index(tokenizer.eos_token_id)]
            assert [t for t in row.tolist() if t >= 0] == alone
    assert batched.shape == (len(prompts), 6)
    assert confidence.shape == (len(prompts),) and ((confidence > 0) & (confidence <= 1)).all()


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("packing", [None, 64])
def test_the_loss_projects_only_completion_positions_onto_the_vocabulary(name, packing, request, monkeypatch):
    """Same loss and gradients as from full logits, with the output layer applied to the completion positions only."""
    model, tokenizer = load(request.getfixturevalue(name))
    batch = PadCollator(tokenizer.pad_token_id)(features(tokenizer))
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, out: rows.append(args[0].shape))

    def loss_and_gradients():
        model.zero_grad()
        loss = prompting.completion_loss(model, batch, packing, tokenizer.pad_token_id)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, gradients = loss_and_gradients()
    targets = int((prompting.completion_labels(batch) != -100).sum())
    assert rows == [torch.Size([targets, model.config.hidden_size])]  # one row per completion token, none for prompts
    monkeypatch.setattr(prompting, "accepts_logits_to_keep", lambda model: False)
    full_loss, full_gradients = loss_and_gradients()
    hook.remove()
    assert rows[1][:-1] == batch["input_ids"].shape or packing  # the full path projects every position
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(gradients, full_gradients, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
