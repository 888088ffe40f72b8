"""Length-aware batching: every example once per epoch, token budgets kept, results back in input order."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import write_recipe

from llmtune.engine.batches import LengthGroupedBatches
from llmtune.inference.batches import PadCollator, SortedBatches, cut_batches

_rng = random.Random(0)
LENGTHS = [min(120, int(_rng.lognormvariate(2.6, 0.6))) + 2 for _ in range(1000)]  # skewed like sentence lengths


def padded(batch: list[int]) -> int:
    return max(LENGTHS[i] for i in batch) * len(batch)


@pytest.mark.parametrize("size, budget", [(32, None), (7, None), (None, 512), (None, 100)])
def test_every_example_exactly_once_per_epoch(size, budget):
    sampler = LengthGroupedBatches(LENGTHS, size, seed=1, max_tokens=budget)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sampler.full_length()
        assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
        orders.append([i for batch in batches for i in batch])
    assert orders[0] != orders[1] != orders[2]  # a new order every epoch


def test_skipping_resumes_the_same_epoch_where_it_stopped():
    sampler = LengthGroupedBatches(LENGTHS, None, seed=3, max_tokens=400)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.skip = 5
    assert list(sampler) == whole[5:] and len(sampler) == len(whole) - 5


@pytest.mark.parametrize("budget", [64, 300, 2048])
def test_token_budget_batches_stay_within_the_budget(budget):
    sampler = LengthGroupedBatches(LENGTHS, None, seed=0, max_tokens=budget)
    for batch in sampler:
        # An example longer than the budget cannot be split, so it travels alone.
        assert padded(batch) <= budget or len(batch) == 1
    for batch in SortedBatches(LENGTHS, None, max_tokens=budget):
        assert padded(batch) <= budget or len(batch) == 1


def test_token_budget_batches_are_full_so_short_examples_come_many_at_a_time():
    order = sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])
    batches = cut_batches(order, LENGTHS, None, max_tokens=1200)
    for batch, following in zip(batches, batches[1:]):
        # Full: one more example (the next in order) would break the budget.
        assert (
            max(LENGTHS[i] for i in batch) * (len(batch) + 1) > 1200
            and following[0] == order[order.index(batch[-1]) + 1]
        )
    assert len(batches[0]) < len(batches[-2])


def test_grouped_batches_are_mostly_real_tokens_and_random_at_batch_level():
    grouped = LengthGroupedBatches(LENGTHS, 32, seed=0)
    shuffled = list(range(len(LENGTHS)))
    random.Random(0).shuffle(shuffled)
    random_batches = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]
    real = sum(LENGTHS)
    assert real / sum(map(padded, grouped)) > 0.9 > 0.6 > real / sum(map(padded, random_batches))
    # Not sorted globally: batch widths do not simply fall or rise through the epoch.
    widths = [max(LENGTHS[i] for i in b) for b in grouped]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_sorted_batches_split_across_processes_without_repeats():
    single = SortedBatches(LENGTHS, 16)
    shards = [list(SortedBatches(LENGTHS, 16, num_processes=3, process_index=p)) for p in range(3)]
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(len(LENGTHS)))
    assert sorted(map(tuple, (b for shard in shards for b in shard))) == sorted(map(tuple, single))


def test_collator_pads_ids_masks_and_labels_on_either_side():
    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [1, 2, 3]},
        {"input_ids": [8], "attention_mask": [1], "labels": [4]},
    ]
    right = PadCollator(pad_token_id=0)(features)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["labels"].tolist() == [
        [1, 2, 3],
        [4, -100, -100],
    ]
    left = PadCollator(pad_token_id=0, padding_side="left")(features)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left["attention_mask"].tolist() == [
        [1, 1, 1],
        [0, 0, 1],
    ]
    assert left["input_ids"].dtype == torch.long


def test_token_budget_training_keeps_predictions_in_input_order_and_reports_speed(cli, tiny_bert, tmp_path):
    texts = [("good " * n + "film", "positive") if n % 2 else ("bad " * n + "film", "negative") for n in range(1, 41)]
    random.Random(1).shuffle(texts)
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.csv"
        files[split].write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in texts))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    code, out, err = cli("train", recipe, "--set", "training.max_tokens=96", "--set", "training.max_length=64")
    assert code == 0, err
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [p["inputs"]["text"] for p in predictions] == [t for t, _ in texts]
    assert [p["reference"] for p in predictions] == [label for _, label in texts]
    train = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    real_tokens = sum(len(t.split()) + 2 for t, _ in texts)  # one token per word, plus [CLS] and [SEP]
    assert train["tokens_per_s"] == pytest.approx(real_tokens / (train["examples"] / train["samples_per_s"]), rel=0.02)
    assert 0 <= train["padding_share"] < 0.5 and train["matmul_peak_gflops"] > 1
    # MFU = 6 x trained non-embedding weights x non-pad tokens/s / the measured peak (full fine-tuning), counted
    # here from the saved model by hand.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    weights = sum(p.numel() for name, p in model.named_parameters() if not name.endswith("_embeddings.weight"))
    expected = 6 * weights * train["tokens_per_s"] / (train["matmul_peak_gflops"] * 1e9)
    assert train["mfu"] == pytest.approx(expected, rel=0.01, abs=6e-5)  # metrics.json rounds to 4 decimals
    assert train["peak_memory_mb"] > 0
    assert "non-pad tokens/s" in out and "MFU" in out


def test_training_flops_per_token_by_hand(tiny_bert, tmp_path):
    """4 FLOPs per frozen weight and token, 6 per trained one; an encoder-decoder's halves see their own tokens."""
    from test_seq2seq import t5_checkpoint
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from llmtune import models
    from llmtune.engine import speed
    from llmtune.models.schema import LoraMethod

    # tiny_bert (width 32, FFN 64, 2 layers): per layer 4 projections of 32x32+32, FFN 32x64+64 and 64x32+32,
    # two norms of 64; then the embeddings' norm, the pooler (32x32+32) and the classifier (32x2+2).
    body = 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64) + 64 + (32 * 32 + 32)
    head = 32 * 2 + 2
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert speed.flops_per_token(bert) == (6 * (body + head), 0)
    lora = 2 * 2 * (8 * 32 + 32 * 8)  # r=8 A and B on query and value in both layers; the head is trained whole
    adapted = models.apply_method(bert, LoraMethod(type="lora"), "SEQ_CLS", ["classifier"])
    assert speed.flops_per_token(adapted) == (4 * (body + head + lora) + 2 * (head + lora), 0)

    # T5 (width 32, 4 heads of 8, FFN 64, 2+2 layers, no biases, tied output layer): the encoder's layers have
    # 4 projections, 2 FFN matrices and 2 norms; the decoder's also cross-attention and a third norm.
    encoder = 2 * (4 * 32 * 32 + 2 * 32 * 64 + 2 * 32) + 32
    decoder = 2 * (8 * 32 * 32 + 2 * 32 * 64 + 3 * 32) + 32
    t5 = AutoModelForSeq2SeqLM.from_pretrained(t5_checkpoint(tmp_path / "t5"))
    assert speed.flops_per_token(t5) == (6 * encoder, 6 * decoder)

    counted = speed.Throughput()
    labels = torch.tensor([[5, 6, 1, -100], [7, 1, -100, -100]])
    counted.add({"attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "labels": labels}, encoder_decoder=True)
    figures = counted.summary(2, 1.0, speed.flops_per_token(t5), 1e6)
    assert figures["tokens_per_s"] == 5 + 5 and figures["padding_share"] == pytest.approx(1 - 10 / 14, abs=1e-4)
    assert figures["mfu"] == pytest.approx((6 * encoder * 5 + 6 * decoder * 5) / 1e6, abs=1e-4)
