"""Metrics of generated text against one or several references, computed offline.

ROUGE (summarization): Google's `rouge-score` package with the Porter stemmer, as the transformers
summarization example and the SciTLDR paper report it: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum
F-measures, the mean over examples, as percentages. ROUGE-Lsum is computed on text with one sentence
per line; sentences are split with a simple regular expression (end punctuation followed by white
space), not nltk's punkt model, which cannot be downloaded offline. With several references an example
scores the best of them for each ROUGE type (rouge-score's `score_multi`, the SciTLDR convention).
The mean is taken directly, not through rouge-score's bootstrap aggregator, whose "mid" value is a
resampled estimate of the same mean.

BLEU and chrF (translation): `sacrebleu` on detokenized text with its defaults (BLEU: 13a tokenizer,
exponential smoothing; chrF: character 6-grams, beta 2); several references per example are separate
reference streams, and examples with fewer references leave their place in the later streams empty.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends with . ! or ? (optionally followed by closing quotes or brackets) and white space.
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, the form ROUGE-Lsum expects (replaces nltk.sent_tokenize, which needs downloaded data)."""
    return "\n".join(sentence for sentence in (part.strip() for part in SENTENCE_END.split(text.strip())) if sentence)


@lru_cache(maxsize=None)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """Per example: ROUGE F-measures (fractions) against the best reference for each type."""
    scorer = _rouge_scorer()
    scores = []
    for prediction, golds in zip(predictions, references, strict=True):
        best = scorer.score_multi([split_sentences(gold) for gold in golds], split_sentences(prediction))
        scores.append({name: best[name].fmeasure for name in ROUGE_TYPES})
    return scores


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures over examples, in percent.

    Args:
        predictions: one generated text per example.
        references: one or more reference texts per example.
    """
    scores = rouge_per_example(predictions, references)
    return {name: 100 * sum(s[name] for s in scores) / len(scores) for name in ROUGE_TYPES} if scores else {}


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """Per-example reference lists as sacrebleu's reference streams (None where an example has fewer references)."""
    width = max(len(golds) for golds in references)
    return [[golds[k] if k < len(golds) else None for golds in references] for k in range(width)]


def bleu_chrf(predictions: list[str], references: list[list[str]]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults) and their sacrebleu signatures.

    Returns:
        {"bleu": float, "chrf": float, "signature": "BLEU|nrefs:1|case:mixed|... chrF2|..."}
    """
    from sacrebleu.metrics import BLEU, CHRF

    streams = reference_streams(references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(predictions, streams)
    chrf_score = chrf.corpus_score(predictions, streams)
    signature = f"BLEU|{bleu.get_signature()} chrF2|{chrf.get_signature()}"
    return {"bleu": bleu_score.score, "chrf": chrf_score.score, "signature": signature}


@lru_cache(maxsize=None)
def _corpus_bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()


def bleu_statistics(prediction: str, golds: str | list[str]) -> list[float]:
    """One example's share of corpus BLEU's statistics (sacrebleu's: hypothesis and closest reference length, then
    matching and total n-grams of orders 1-4); summed over examples they give corpus BLEU (bleu_from_statistics)."""
    golds = golds if isinstance(golds, list) else [golds]
    return [float(value) for value in _corpus_bleu()._extract_corpus_statistics([prediction], [[g] for g in golds])[0]]


def bleu_from_statistics(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu's default: exponential smoothing of orders without a match) of summed statistics,
    for any number of leading dimensions (..., 10) -> (..., 1)."""
    hypothesis, reference = sums[..., 0], sums[..., 1]
    correct, total = sums[..., 2:6], sums[..., 6:10]
    brevity = np.where(hypothesis < reference, np.exp(1 - reference / np.maximum(hypothesis, 1e-12)), 1.0)
    brevity = np.where(hypothesis > 0, brevity, 0.0)
    halvings = np.cumsum(correct == 0, axis=-1)  # sacrebleu doubles its smoothing at each order without a match
    safe_total = np.maximum(total, 1e-12)
    precisions = np.where(correct > 0, 100 * correct / safe_total, 100 / (2.0**halvings * safe_total))
    score = brevity * np.exp(np.log(precisions).mean(axis=-1))
    defined = (correct.sum(axis=-1) > 0) & (total > 0).all(axis=-1)
    return np.where(defined, score, 0.0)[..., None]


@lru_cache(maxsize=None)
def _corpus_chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf_statistics(prediction: str, golds: str | list[str]) -> list[float]:
    """One example's share of corpus chrF's statistics (sacrebleu's: hypothesis, reference and matching character
    n-grams of orders 1-6, of the best reference); summed over examples they give corpus chrF."""
    golds = golds if isinstance(golds, list) else [golds]
    return [float(value) for value in _corpus_chrf()._extract_corpus_statistics([prediction], [[g] for g in golds])[0]]


def chrf_from_statistics(sums: np.ndarray, beta: float = 2.0) -> np.ndarray:
    """Corpus chrF (sacrebleu's default: averaged precision and recall over the orders both sides have) of summed
    statistics, (..., 18) -> (..., 1)."""
    orders = sums.reshape(*sums.shape[:-1], -1, 3)
    hypothesis, reference, match = orders[..., 0], orders[..., 1], orders[..., 2]
    present = (hypothesis > 0) & (reference > 0)
    count = np.maximum(present.sum(axis=-1), 1)
    precision = (np.where(present, match / np.maximum(hypothesis, 1e-12), 0.0)).sum(axis=-1) / count
    recall = (np.where(present, match / np.maximum(reference, 1e-12), 0.0)).sum(axis=-1) / count
    factor = beta**2
    denominator = factor * precision + recall
    score = 100 * (1 + factor) * precision * recall / np.maximum(denominator, 1e-300)
    return np.where(denominator > 0, score, 0.0)[..., None]


@lru_cache(maxsize=None)
def _sentence_bleu():
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def sentence_bleu(prediction: str, golds: list[str]) -> float:
    """One example's BLEU, as sacrebleu's `sentence_bleu` computes it (effective n-gram order),
    for ranking predictions."""
    return _sentence_bleu().sentence_score(prediction, golds).score
