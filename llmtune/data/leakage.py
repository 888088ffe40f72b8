"""Leakage audit between splits: examples of a split evaluated on (validation, test) that also appear, exactly or
nearly, in a split before it (train, validation). `prepare` runs it for `llmtune validate` and `llmtune train`.

What is compared comes from the task (`Task.leakage_fields`): groups of texts that identify an example (a sentence;
a pair joined; a QA context and its question apart). Each text is normalised first: lower case, punctuation
removed, whitespace collapsed, so "Great film!" and "great film" are the same text.

- exact: the normalised texts are equal (a set lookup).
- near: the sets of word bigrams of the two texts have a Jaccard similarity of at least NEAR_JACCARD (0.8): one
  word changed in a sentence of 19 words or more, one dropped from 15 or added to 14. Bigrams keep word order
  (single words would make "not good, bad" and "not bad, good" the same); 0.9 would ask for 39 words before one
  changed word is allowed, longer than most sentences and questions. (A word at either end touches one bigram, not
  two: shorter texts pass there.) A text of one word is its own single shingle: it can only be an exact duplicate.

How near pairs are found: an all-pairs set-similarity join with prefix filtering (Chaudhuri et al. 2006; Xiao
et al. 2008, "PPJoin"). Under any fixed order of the bigrams, two sets with Jaccard >= t share a bigram among the
first |x| - ceil(t |x|) + 1 of each; so only texts sharing a prefix bigram are candidates, a size filter
(t |y| <= |x| <= |y| / t) drops most of those, and the exact Jaccard decides. The order puts the later split's
bigrams rarest first and, before them, bigrams the later split lacks: an earlier text whose prefix holds only
those cannot match and is not indexed. Unlike MinHash LSH this misses no pair above the threshold (a test checks
it against all pairs), needs no seed and no extra package, and stays a few seconds of pure Python on SST-2's
67,349 train phrases against its 872 validation sentences (docs/benchmarks.md has the measured times).

Counts are rows of the later split (the one scored) that have a duplicate in the earlier one; a row counts as
exact when any of its text groups is, and as near when none is exact and any is near.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..common.errors import DataWarning, UserError

NEAR_JACCARD = 0.8
EXAMPLES_KEPT = 3  # of each kind per pair of splits, for validate's lines and the report
SHOWN_CHARS = 160
PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(PUNCTUATION.sub(" ", text.lower()).split())


def field_text(value) -> str:
    """A row's value as one text: a list of words or sentences joined with spaces; None and others: empty."""
    if isinstance(value, list):
        return " ".join(part for part in value if isinstance(part, str))
    return value if isinstance(value, str) else ""


def group_texts(dataset, group: Sequence[str | tuple[str, str]]) -> list[str]:
    """One normalised text per row: the group's texts (columns, or (column, key) inside a nested column) joined."""
    # one slice of the needed columns: indexing a column alone walks it row by row (datasets 4)
    table = dataset.select_columns(list(dict.fromkeys(i if isinstance(i, str) else i[0] for i in group)))[:]
    columns = []
    for item in group:
        column, key = (item, None) if isinstance(item, str) else item
        values = table[column]
        columns.append([field_text(v.get(key) if isinstance(v, dict) else None) for v in values] if key else values)
    seen: dict[str, str] = {}  # SQuAD-style data repeats each context for every question on it
    texts = [" ".join(field_text(value) for value in parts) for parts in zip(*columns)]
    return [seen[text] if text in seen else seen.setdefault(text, normalise(text)) for text in texts]


def shingles(text: str) -> frozenset:
    """The text's word bigrams (a one-word text: the word)."""
    words = text.split()
    return frozenset(zip(words, words[1:])) if len(words) > 1 else frozenset(words)


def prefix_length(size: int, threshold: float) -> int:
    return size - math.ceil(threshold * size - 1e-9) + 1


def near_matches(earlier: list[str], later: list[str], threshold: float = NEAR_JACCARD) -> dict[int, tuple[int, float]]:
    """{position in `later`: (position in `earlier`, Jaccard)} of the most similar earlier text at or above
    `threshold`, by word-bigram Jaccard (prefix-filtered similarity join, see the module docstring)."""
    sets_earlier, sets_later = [shingles(t) for t in earlier], [shingles(t) for t in later]
    # Any fixed order of the bigrams keeps the prefix filter exact. Those of the later texts go rarest first; an
    # earlier text's bigrams that no later text has come before them all, so a text whose prefix holds only such
    # bigrams can match nothing and is never indexed (most of a large train split).
    frequency = Counter(gram for grams in sets_later for gram in grams)
    frequency.update(gram for grams in sets_earlier for gram in grams if gram in frequency)
    rank = {gram: position for position, (gram, _) in enumerate(sorted(frequency.items(), key=lambda g: g[1]))}
    index: dict[int, list[int]] = defaultdict(list)
    for position, grams in enumerate(sets_earlier):
        shared = sorted(rank[gram] for gram in grams if gram in rank)
        for gram in shared[: prefix_length(len(grams), threshold) - (len(grams) - len(shared))]:
            index[gram].append(position)
    found = {}
    for position, grams in enumerate(sets_later):
        ranks, size = sorted(rank[gram] for gram in grams), len(grams)
        candidates = {c for gram in ranks[: prefix_length(size, threshold)] for c in index.get(gram, ())}
        best = None
        for candidate in candidates:
            other = sets_earlier[candidate]
            if not threshold * size <= len(other) <= size / threshold:
                continue
            shared = len(grams & other)
            similarity = shared / (size + len(other) - shared)
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        if best is not None:
            found[position] = best
    return found


@dataclass
class Match:
    kind: str  # exact | near
    group: str  # the text group, e.g. "context"
    later_row: int
    earlier_row: int
    later_text: str
    earlier_text: str
    similarity: float


@dataclass
class PairAudit:
    """What one pair of splits shares."""

    earlier: str
    later: str
    compared: tuple[int, int]
    exact_rows: set = field(default_factory=set)
    near_rows: set = field(default_factory=set)
    by_group: dict = field(default_factory=dict)  # {group name: {"exact": n, "near": n}} with several groups
    examples: list[Match] = field(default_factory=list)

    def as_dict(self) -> dict:
        """metrics.json's entry for the pair."""
        entry = {"exact": len(self.exact_rows), "near": len(self.near_rows), "compared": list(self.compared)}
        if self.by_group:
            entry["fields"] = self.by_group
        entry["examples"] = [
            {"kind": m.kind, "field": m.group, self.later: [m.later_row, m.later_text],
             self.earlier: [m.earlier_row, m.earlier_text], "similarity": round(m.similarity, 3)}
            for m in self.examples
        ]  # fmt: skip
        return entry


def audit_group(pair: PairAudit, name: str, earlier: list[str], later: list[str]) -> tuple[set, set]:
    """Rows of the later split with an exact, and with a near (not exact), duplicate of this group's text."""
    first_row: dict[str, int] = {}
    for row, text in enumerate(earlier):
        if text:
            first_row.setdefault(text, row)
    exact = {row: first_row[text] for row, text in enumerate(later) if text in first_row}
    # each distinct text once: SQuAD-style data repeats a context for every question on it
    rest: dict[str, list[int]] = defaultdict(list)
    for row, text in enumerate(later):
        if text and row not in exact:
            rest[text].append(row)
    distinct_later, distinct_earlier = list(rest), list(first_row)
    near = {}
    for position, (match, similarity) in near_matches(distinct_earlier, distinct_later).items():
        for row in rest[distinct_later[position]]:
            near[row] = (first_row[distinct_earlier[match]], similarity)
    for kind, rows in (("exact", {r: (e, 1.0) for r, e in exact.items()}), ("near", near)):
        shown = [m for m in pair.examples if m.kind == kind]
        for row, (earlier_row, similarity) in sorted(rows.items())[: EXAMPLES_KEPT - len(shown)]:
            texts = (later[row][:SHOWN_CHARS], earlier[earlier_row][:SHOWN_CHARS])
            pair.examples.append(Match(kind, name, row, earlier_row, *texts, similarity))
    return set(exact), set(near)


def audit(splits: dict, groups: list[tuple]) -> dict[str, PairAudit]:
    """Every pair of splits present (train/validation, train/test, validation/test), keyed "earlier/later"."""
    names = [" + ".join(i if isinstance(i, str) else f"{i[0]}[{i[1]}]" for i in group) for group in groups]
    texts = {split: [group_texts(splits[split], group) for group in groups] for split in splits}
    results = {}
    for earlier, later in PAIRS:
        if earlier not in splits or later not in splits:
            continue
        pair = PairAudit(earlier, later, (len(splits[earlier]), len(splits[later])))
        for name, earlier_texts, later_texts in zip(names, texts[earlier], texts[later]):
            exact, near = audit_group(pair, name, earlier_texts, later_texts)
            pair.exact_rows |= exact
            pair.near_rows |= near
            if len(groups) > 1:
                pair.by_group[name] = {"exact": len(exact), "near": len(near)}
        pair.near_rows -= pair.exact_rows
        pair.examples.sort(key=lambda m: m.kind)  # exact first
        results[f"{earlier}/{later}"] = pair
    return results


def over_threshold(results: dict[str, PairAudit], threshold: float) -> list[PairAudit]:
    """The pairs whose duplicated rows are more than `threshold` of the smaller split."""
    return [
        pair
        for pair in results.values()
        if len(pair.exact_rows | pair.near_rows) > threshold * max(1, min(pair.compared))
    ]


def summary_line(pairs: list[PairAudit], threshold: float) -> str:
    """One line with the counts of the pairs over the threshold."""
    parts = [
        f"{len(p.exact_rows)} exact and {len(p.near_rows)} near duplicates of {p.later} rows in {p.earlier} "
        f"(of {p.compared[1]:,} {p.later} rows)"
        for p in pairs
    ]
    return "data: " + "; ".join(parts) + f"; more than data.leakage_threshold ({threshold:g}) of the smaller split"


def check(splits: dict, groups: list[tuple], mode: str, threshold: float) -> dict[str, PairAudit]:
    """The audit, with one warning line (mode "warn") or a refusal (mode "refuse") above the threshold.

    Raises:
        UserError: mode "refuse" and some pair of splits shares more than the threshold.
    """
    if mode == "off" or not groups:
        return {}
    results = audit(splits, groups)
    leaking = over_threshold(results, threshold)
    if leaking:
        line = summary_line(leaking, threshold)
        if mode == "refuse":
            raise UserError(
                f"{line}; refused (data.leakage: refuse, or validate --strict). Remove them, or set it to warn"
            )
        warnings.warn(line + "; `llmtune validate` shows examples", DataWarning, stacklevel=2)
    return results
