"""Data augmentation of the train split (`data.augment`): augmented copies of a share of the training rows,
added before tokenization, with the rows' labels kept.

Each method rewrites only what its task says may change without changing the reference (the task's
`augment_fields`): a classified sentence, a question (never the context its answer spans point into), a source
text; for token classification, the words outside every entity, their tags moving with them. Validation and
test are never touched. The augmented train split is cached by a fingerprint of the data, the methods, the
seed and the models' or lexicons' files, so that a second run (or a resume, or a sweep's next trial) reads it
back instead of translating again.

The word operations are EDA's (Wei and Zou, 2019): a few lines each, no library does them on our rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..common.errors import UserError
from ..common.lazy import datasets, torch
from ..models.schema import ModelSpec

CACHE_VERSION = "augment-1"
WORDY = re.compile(r"[A-Za-z][A-Za-z'\-]*$")  # words a synonym may replace (not numbers, punctuation or @handles)
PUNCTUATED = re.compile(r"^(\W*)(.*?)(\W*)$")
MASKED_LM_BATCH = 32  # texts per forward pass of a masked_lm


@dataclass(frozen=True)
class AugmentFields:
    """What augmentation may rewrite in a task's training rows without changing their references."""

    # text columns rewritten whole (a sentence, a question, a source text): a column, or (column, key) for a text
    # inside a nested column (a WMT-style `translation: {de: ..., en: ...}`)
    texts: tuple[str | tuple[str, str], ...] = ()
    words: str | None = None  # or: a column of word lists (token classification) ...
    tags: str | None = None  # ... with its per-word tags, which move with the words
    outside: frozenset = frozenset()  # the tag (name and id) of words outside every entity: only these change
    continues: frozenset = frozenset()  # tags that continue an entity (I-): nothing is inserted before them


def check(methods: list, fields: AugmentFields | None, task_name: str) -> None:
    """Refuse, before anything loads, methods the task cannot take with its references intact.

    Raises:
        UserError: the task has nothing augmentation may rewrite, or a method would misalign word tags.
    """
    if not methods:
        return
    if fields is None:
        raise UserError(
            f"data.augment: the {task_name} task has no input that can be rewritten with its reference kept; "
            "expected no data.augment for this task"
        )
    for number, method in enumerate(methods):
        lexicon = getattr(method, "lexicon", None)
        if lexicon is not None and not Path(lexicon).exists():
            raise UserError(
                f"data.augment[{number}] ({method.type}): lexicon {lexicon} does not exist; expected a synonym "
                "file or a WordNet database folder"
            )
        if method.type == "back_translation" and fields.words:
            raise UserError(
                f"data.augment[{number}]: back_translation cannot keep a translation's words aligned with the "
                f"{task_name} task's per-word tags; expected random_swap, random_delete, random_insert or synonym"
            )


def apply(
    dataset: datasets.Dataset, methods: list, fields: AugmentFields, seed: int, echo: Callable = print
) -> tuple[datasets.Dataset, dict[str, int]]:
    """The train split with each method's augmented rows appended, and how many rows each method added.

    Read from the cache when this data was augmented the same way before.

    Raises:
        UserError: a model or lexicon that cannot be loaded.
    """
    fingerprint = _fingerprint(dataset, methods, fields, seed)
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "llmtune-augment" / fingerprint
    counts_file = folder / "llmtune-augment.json"
    if counts_file.exists():
        counts = json.loads(counts_file.read_text())
        echo(f"augment: {describe(counts)} (cached: {folder})")
        return datasets.load_from_disk(str(folder)), counts
    rows = dataset.to_list()
    torch.manual_seed(seed)  # back-translation's sampling
    added, counts = [], {}
    for number, method in enumerate(methods):
        rng = random.Random(f"{seed}-{number}-{method.type}")
        chosen = sorted(rng.sample(range(len(rows)), max(1, round(method.share * len(rows)))))
        new = _augmented(method, [rows[i] for i in chosen], fields, rng, number, echo)
        new = [row for row in new if row is not None]
        key = method.type if method.type not in counts else f"{method.type}_{number}"
        counts[key] = len(new)
        added += new
    augmented = datasets.concatenate_datasets([dataset, _like(dataset, added)]) if added else dataset
    _save(augmented, counts, folder)
    echo(f"augment: {describe(counts)}")
    return datasets.load_from_disk(str(folder)), counts


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{method} +{count:,} rows" for method, count in counts.items())


def _like(dataset: datasets.Dataset, rows: list[dict]) -> datasets.Dataset:
    """New rows as a dataset with the original's column types (so the two concatenate)."""
    columns = {name: [row[name] for row in rows] for name in dataset.column_names}
    return datasets.Dataset.from_dict(columns, features=dataset.features)


def _save(dataset: datasets.Dataset, counts: dict, folder: Path) -> None:
    """Written to a temporary folder and renamed: a killed run leaves no half-written cache to read back."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    dataset.save_to_disk(str(temporary))
    (temporary / "llmtune-augment.json").write_text(json.dumps(counts))
    try:
        os.replace(temporary, folder)
    except OSError:  # another process of the same run got there first: its copy is the same
        shutil.rmtree(temporary, ignore_errors=True)


def _fingerprint(dataset: datasets.Dataset, methods: list, fields: AugmentFields, seed: int) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{dataset._fingerprint}|{seed}|{fields!r}".encode())
    for method in methods:
        digest.update(method.model_dump_json().encode())
        for value in method.model_dump().values():  # a local model or lexicon: its files' sizes and times
            if isinstance(value, str) and os.path.exists(value):
                for path in sorted(Path(value).rglob("*")) if os.path.isdir(value) else [Path(value)]:
                    if path.is_file():
                        stat = path.stat()
                        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _augmented(method, rows: list[dict], fields: AugmentFields, rng, number: int, echo) -> list[dict | None]:
    """One augmented copy of each row (None where the method left it unchanged)."""
    where = f"data.augment[{number}] ({method.type})"
    if method.type == "back_translation":
        return _back_translated(method, rows, fields, where, echo)
    lexicon = load_lexicon(method.lexicon, where) if getattr(method, "lexicon", None) else None
    if method.type == "synonym" and method.masked_lm:
        return MaskedLmSynonyms(method.masked_lm, where).rows(rows, fields, method.probability, rng)
    operation = {
        "random_swap": swap,
        "random_delete": delete,
        "random_insert": lambda words, free, p, rng: insert(words, free, p, rng, lexicon),
        "synonym": lambda words, free, p, rng: replace(words, free, p, rng, lexicon),
    }[method.type]
    return [_word_edit(row, fields, operation, method.probability, rng) for row in rows]


# ---------------------------------------------------------------------------------------------- word operations
# Each takes the words, the positions it may touch, the probability and the random generator, and returns the new
# words with, for each, the position it came from (None: inserted), so that tags can follow.


def swap(words: list[str], free: list[int], probability: float, rng) -> list[tuple[str, int | None]]:
    order = list(range(len(words)))
    if len(free) >= 2:
        for _ in range(max(1, round(probability * len(words)))):
            a, b = rng.sample(free, 2)
            order[a], order[b] = order[b], order[a]
    return [(words[i], i) for i in order]


def delete(words: list[str], free: list[int], probability: float, rng) -> list[tuple[str, int | None]]:
    if len(words) < 2 or not free:
        return [(word, i) for i, word in enumerate(words)]
    dropped = {i for i in free if rng.random() < probability} or {rng.choice(free)}
    if len(dropped) == len(words):  # never the whole text
        dropped.discard(rng.choice(sorted(dropped)))
    return [(word, i) for i, word in enumerate(words) if i not in dropped]


def insert(words, free, probability, rng, lexicon: dict | None) -> list[tuple[str, int | None]]:
    """A copy of one of the free words (a synonym of it, with a lexicon) put before a free word or at the end."""
    out: list[tuple[str, int | None]] = [(word, i) for i, word in enumerate(words)]
    if not free:
        return out
    for _ in range(max(1, round(probability * len(words)))):
        source = _parts(words[rng.choice(free)])[1]
        if lexicon is not None:
            options = lexicon.get(source.lower())
            if not options:
                continue
            source = _cased(rng.choice(options), source)
        if not source:
            continue
        places = [p for p, (_, i) in enumerate(out) if i is None or i in free] + [len(out)]
        out.insert(rng.choice(places), (source, None))
    return out


def replace(words, free, probability, rng, lexicon: dict) -> list[tuple[str, int | None]]:
    candidates = [i for i in free if lexicon.get(_parts(words[i])[1].lower())]
    count = min(len(candidates), max(1, round(probability * len(words))))
    new = list(words)
    for i in rng.sample(candidates, count):
        before, core, after = _parts(words[i])
        new[i] = before + _cased(rng.choice(lexicon[core.lower()]), core) + after
    return [(word, i) for i, word in enumerate(new)]


def _parts(word: str) -> tuple[str, str, str]:
    """A word split from the punctuation around it ("(great," → "(", "great", ","): texts are split on spaces."""
    match = PUNCTUATED.match(word)
    return match.group(1), match.group(2), match.group(3)


def _cased(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _word_edit(row: dict, fields: AugmentFields, operation, probability: float, rng) -> dict | None:
    """The row with its text columns (or its word list and tags) edited; None when nothing changed."""
    new = dict(row)
    if fields.words:
        words, tags = row[fields.words], row[fields.tags]
        free = [i for i, tag in enumerate(tags) if tag in fields.outside]
        edited = operation(list(words), free, probability, rng)
        # An insertion must not split an entity: nothing goes before a word that continues one.
        edited = _no_split_entities(edited, tags, fields)
        new[fields.words] = [word for word, _ in edited]
        new[fields.tags] = [tags[free[0]] if i is None else tags[i] for _, i in edited]  # inserted: outside
    else:
        for column in fields.texts:
            words = read_text(row, column).split()
            if words:
                edited = operation(words, list(range(len(words))), probability, rng)
                write_text(new, column, " ".join(word for word, _ in edited))
    return None if new == row else new


def read_text(row: dict, field: str | tuple[str, str]) -> str:
    """A text of a row: its column, or (column, key) inside a nested column."""
    value = row.get(field[0], {}).get(field[1]) if isinstance(field, tuple) else row.get(field)
    return value or ""


def write_text(row: dict, field: str | tuple[str, str], text: str) -> None:
    """Set a text of a row; a nested column is copied, so the row the copy came from is left as it was."""
    if isinstance(field, tuple):
        row[field[0]] = {**row[field[0]], field[1]: text}
    else:
        row[field] = text


def _no_split_entities(edited: list, tags: list, fields: AugmentFields) -> list:
    kept = []
    for position, (word, origin) in enumerate(edited):
        following = next((i for _, i in edited[position + 1 :] if i is not None), None)
        if origin is None and following is not None and tags[following] in fields.continues:
            continue
        kept.append((word, origin))
    return kept


# ---------------------------------------------------------------------------------------------- synonyms


def load_lexicon(path: str, where: str) -> dict[str, list[str]]:
    """{word: its synonyms} from a WordNet database folder or a text file of synonym groups.

    Raises:
        UserError: the path is missing, or a folder that is not a WordNet database.
    """
    source = Path(path)
    if source.is_dir():
        return _wordnet(source, where)
    if not source.is_file():
        raise UserError(f"{where}: lexicon {path} does not exist; expected a synonym file or a WordNet folder")
    lexicon: dict[str, list[str]] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        group = [word.strip() for word in re.split(r"[,\t]", line) if word.strip()]
        for word in group:
            lexicon.setdefault(word.lower(), []).extend(other for other in group if other.lower() != word.lower())
    return {word: sorted(set(others)) for word, others in lexicon.items() if others}


def _wordnet(folder: Path, where: str) -> dict[str, list[str]]:
    """Synonyms from a WordNet database's synset lines (data.noun, data.verb, data.adj, data.adv).

    Read by hand: a synset line is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ...`, and
    that is all synonymy needs. nltk's reader wants its own layout (a `lexnames` file Debian's copy lacks)."""
    files = [folder / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv") if (folder / f"data.{pos}").exists()]
    if not files:
        raise UserError(f"{where}: lexicon {folder} is a folder without data.noun; expected a WordNet database")
    lexicon: dict[str, set[str]] = {}
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line[:1].isdigit():  # the licence header lines start with spaces
                continue
            fields = line.split()
            count = int(fields[3], 16)
            names = [re.sub(r"\(.*\)$", "", word) for word in fields[4 : 4 + 2 * count : 2]]
            names = [name for name in names if "_" not in name]  # single words only
            for name in names:
                lexicon.setdefault(name.lower(), set()).update(o for o in names if o.lower() != name.lower())
    return {word: sorted(others) for word, others in lexicon.items() if others}


def _checkpoint(name: str, where: str) -> models.Checkpoint:
    """An augmentation model found the way model.name is: a local folder or GGUF file, a llmtune run, the hub or
    its cache, or an installed offline package (so `HuggingFaceTB/SmolLM2-135M-Instruct` works offline too).

    Raises:
        UserError: as for model.name, with the augmentation key named instead.
    """
    with _keyed(where):
        return models.resolve_checkpoint(ModelSpec(name=name))


@contextmanager
def _keyed(where: str):
    """Model loading reports its errors under model.name; here the model comes from a data.augment key."""
    try:
        yield
    except UserError as error:
        raise UserError(str(error).replace("model.name", where, 1)) from None


class MaskedLmSynonyms:
    """Replacements proposed by a masked language model: each chosen word masked, the most likely whole word
    in its place that differs from it taken."""

    def __init__(self, name: str, where: str):
        checkpoint = _checkpoint(name, f"{where} masked_lm")
        with _keyed(f"{where} masked_lm"):
            self.tokenizer = models.load_tokenizer(checkpoint)
            self.model = models.load_model(checkpoint, "AutoModelForMaskedLM")[0].eval()
        if self.tokenizer.mask_token is None:
            raise UserError(f"{where}: masked_lm '{name}' has no mask token; expected a masked language model")

    def rows(self, rows: list[dict], fields: AugmentFields, probability: float, rng) -> list[dict | None]:
        jobs = []  # (row number, column, its words, the positions that may change)
        for number, row in enumerate(rows):
            if fields.words:
                words, tags = list(row[fields.words]), row[fields.tags]
                free = [i for i, tag in enumerate(tags) if tag in fields.outside and WORDY.match(words[i])]
                jobs.append((number, fields.words, words, free))
            for column in fields.texts:
                words = read_text(row, column).split()
                jobs.append((number, column, words, [i for i, word in enumerate(words) if WORDY.match(word)]))
        jobs = [
            (number, column, words, rng.sample(free, min(len(free), max(1, round(probability * len(words))))))
            for number, column, words, free in jobs
            if free
        ]
        out = [dict(row) for row in rows]
        for start in range(0, len(jobs), MASKED_LM_BATCH):
            batch = jobs[start : start + MASKED_LM_BATCH]
            for (number, column, _, _), new in zip(batch, self.replaced(batch)):
                if column == fields.words:
                    out[number][column] = new
                else:
                    write_text(out[number], column, " ".join(new))
        return [None if new == row else new for row, new in zip(rows, out)]

    def replaced(self, batch: list[tuple]) -> list[list[str]]:
        """Each job's words with its chosen positions replaced: one forward pass for the batch."""
        mask = self.tokenizer.mask_token
        texts = [" ".join(mask if i in chosen else word for i, word in enumerate(words)) for *_, words, chosen in batch]
        encoded = self.tokenizer(texts, return_tensors="pt", truncation=True, padding=True)
        with torch.inference_mode():
            logits = self.model(**encoded).logits
        results = []
        for row, (*_, words, chosen) in enumerate(batch):
            positions = (encoded["input_ids"][row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
            new = list(words)
            for i, position in zip(sorted(chosen), positions):
                for token in logits[row, position].topk(20).indices.tolist():
                    candidate = self.tokenizer.decode([token]).strip()
                    if WORDY.match(candidate) and candidate.lower() != words[i].lower():
                        new[i] = _cased(candidate, words[i])
                        break
            results.append(new)
        return results


# ---------------------------------------------------------------------------------------------- back-translation


def _back_translated(method, rows: list[dict], fields: AugmentFields, where: str, echo) -> list[dict | None]:
    forward = Translator(method.forward, method.forward_prompt, method, f"{where}.forward")
    out = [dict(row) for row in rows]
    for column in fields.texts:
        there = forward.translate([read_text(row, column) for row in rows], echo)
        for row, text in zip(out, there):
            write_text(row, column, text)
    del forward
    backward = Translator(method.backward, method.backward_prompt, method, f"{where}.backward")
    for column in fields.texts:
        back = backward.translate([read_text(row, column) for row in out], echo)
        for row, text in zip(out, back):
            write_text(row, column, text)
    return [
        None if new == row or any(not read_text(new, column).strip() for column in fields.texts) else new
        for row, new in zip(rows, out)
    ]


class Translator:
    """A sequence-to-sequence model, or a causal LM with a prompt, that translates texts in batches."""

    def __init__(self, name: str, prompt: str | None, method, where: str):
        self.method, self.prompt, self.where = method, prompt, where
        checkpoint = _checkpoint(name, where)
        with _keyed(where):
            self.causal = not models.load_config(checkpoint).is_encoder_decoder
            if self.causal and (prompt is None or "{text}" not in prompt):
                raise UserError(
                    f"{where}: '{name}' is a causal LM; expected a prompt with {{text}} "
                    f"({where.rsplit('.', 1)[-1]}_prompt)"
                )
            self.tokenizer = models.load_tokenizer(checkpoint)
            auto = "AutoModelForCausalLM" if self.causal else "AutoModelForSeq2SeqLM"
            self.model = models.load_model(checkpoint, auto)[0].eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if self.causal:
            self.tokenizer.padding_side = "left"

    def translate(self, texts: list[str], echo) -> list[str]:
        """The translations, in order; a progress line every 30 s (a few thousand texts take minutes)."""
        m, out, shown = self.method, [], time.monotonic()
        settings = {"max_new_tokens": m.max_new_tokens, "num_beams": m.num_beams, "do_sample": m.sample}
        if m.sample:
            settings["top_p"] = 0.9
        for start in range(0, len(texts), m.batch_size):
            batch = texts[start : start + m.batch_size]
            inputs = [self.prompt.replace("{text}", text) for text in batch] if self.causal else batch
            encoded = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True).to(self.device)
            encoded.pop("token_type_ids", None)  # BERT tokenizers give them; an encoder-decoder's generate does not
            with torch.inference_mode():
                generated = self.model.generate(**encoded, pad_token_id=self.tokenizer.pad_token_id, **settings)
            if self.causal:
                generated = generated[:, encoded["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            out += [text.strip().split("\n")[0].strip() if self.causal else text.strip() for text in decoded]
            if time.monotonic() - shown > 30:
                echo(f"augment: {self.where}: {len(out):,} of {len(texts):,} texts translated")
                shown = time.monotonic()
        return out
