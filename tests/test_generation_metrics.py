"""ROUGE, BLEU and chrF: llmtune's functions against rouge-score and sacrebleu called directly,
one and several references."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmtune.metrics.generation import (
    ROUGE_TYPES,
    bleu_chrf,
    reference_streams,
    rouge,
    rouge_per_example,
    sentence_bleu,
    split_sentences,
)

PREDICTIONS = [
    "The cat sat on the mat. It was happy.",
    "A man is riding a bicycle down the street.",
    "Researchers propose a new method for training networks faster!",
    "",
]
REFERENCES = [
    ["A cat was sitting on the mat. The cat looked happy."],
    ["A man rides his bike along a busy street.", "Someone is cycling down the road."],
    [
        "We propose adaptive loss scaling to speed up mixed precision training.",
        "A faster training method.",
        "New training method.",
    ],
    ["Nothing was generated here."],
]


def test_sentences_are_split_on_end_punctuation_followed_by_space():
    assert split_sentences("First one. Second one! Third? Fourth") == "First one.\nSecond one!\nThird?\nFourth"
    assert split_sentences('He said "stop." Then left.') == 'He said "stop."\nThen left.'
    assert split_sentences("Version 2.6 is out.") == "Version 2.6 is out."  # no space after the dot: one sentence
    assert split_sentences("  ") == ""


def test_rouge_equals_rouge_score_with_one_reference():
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    predictions = PREDICTIONS[:2]
    references = [[golds[0]] for golds in REFERENCES[:2]]
    expected = {name: 0.0 for name in ROUGE_TYPES}
    for prediction, golds in zip(predictions, references):
        scores = scorer.score(golds[0].replace(". ", ".\n"), prediction.replace(". ", ".\n"))
        for name in ROUGE_TYPES:
            expected[name] += 100 * scores[name].fmeasure / len(predictions)
    assert rouge(predictions, references) == pytest.approx(expected, abs=1e-6)
    # Lsum differs from L when sentences are split: the test covers the splitting, not just the package.
    assert rouge(predictions, references)["rougeLsum"] != pytest.approx(
        rouge(predictions, references)["rougeL"], abs=1e-6
    )


def test_rouge_takes_the_best_reference_per_type():
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_example = rouge_per_example(PREDICTIONS, REFERENCES)
    for prediction, golds, got in zip(PREDICTIONS, REFERENCES, per_example):
        for name in ROUGE_TYPES:
            best = max(
                scorer.score(split_sentences(gold), split_sentences(prediction))[name].fmeasure for gold in golds
            )
            assert got[name] == pytest.approx(best, abs=1e-9)
    means = rouge(PREDICTIONS, REFERENCES)
    for name in ROUGE_TYPES:
        assert means[name] == pytest.approx(100 * sum(s[name] for s in per_example) / len(per_example), abs=1e-6)
    # A second, better reference raises the score: the maximum is taken, not the mean.
    assert rouge(PREDICTIONS[1:2], REFERENCES[1:2])["rouge1"] > rouge(PREDICTIONS[1:2], [REFERENCES[1][1:]])["rouge1"]


def test_stemming_is_on():
    assert (
        rouge(["the cats were running"], [["the cat was run"]])["rouge1"]
        > rouge(["the cats were running"], [["the dog was run"]])["rouge1"]
    )
    assert rouge_per_example(["running cats"], [["run cat"]])[0]["rouge1"] == pytest.approx(1.0)


def test_bleu_and_chrf_equal_sacrebleu_with_one_reference():
    predictions = PREDICTIONS[:3]
    references = [[golds[0]] for golds in REFERENCES[:3]]
    streams = [[golds[0] for golds in references]]
    got = bleu_chrf(predictions, references)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score, abs=1e-6)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score, abs=1e-6)
    assert got["signature"].startswith("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "chrF2|nrefs:1" in got["signature"]


def test_bleu_and_chrf_use_several_reference_streams():
    streams = reference_streams(REFERENCES)
    assert len(streams) == 3 and streams[2] == [None, None, REFERENCES[2][2], None]
    got = bleu_chrf(PREDICTIONS, REFERENCES)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score, abs=1e-6)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, streams).score, abs=1e-6)
    assert "nrefs:var" in got["signature"]
    # More references can only match more n-grams.
    assert got["bleu"] > bleu_chrf(PREDICTIONS, [golds[:1] for golds in REFERENCES])["bleu"]


def test_sentence_bleu_equals_sacrebleu():
    for prediction, golds in zip(PREDICTIONS, REFERENCES):
        assert sentence_bleu(prediction, golds) == pytest.approx(
            sacrebleu.sentence_bleu(prediction, golds).score, abs=1e-6
        )


def test_degenerate_outputs_are_named_with_their_share():
    from llmtune.tasks.generation import degeneracy, is_loop

    varied = [f"a sentence about topic number {k}." for k in range(12)]
    assert degeneracy(varied) is None
    assert degeneracy(["same"] * 9) is None  # fewer than 10 outputs: too few to judge
    assert degeneracy(["we propose a method."] * 7 + varied[:5]) == (
        "58% of the 12 generated outputs are the same text ('we propose a method.')"
    )
    assert degeneracy([""] * 6 + ["  "] + varied[:5]) == "58% of the 12 generated outputs are empty"
    loops = [f"the cat sat on the cat sat on the cat sat on {k}" for k in range(7)]
    assert degeneracy(loops + varied[:5]) == "58% of the 12 generated outputs repeat a phrase over and over"
    assert degeneracy(["we propose a method."] * 6 + varied[:6]) is None  # half is not more than half
    assert is_loop("the cat sat the cat sat the cat sat") and not is_loop("the cat sat on the mat with a hat")
    assert not is_loop("the the the")  # too short to call a loop
