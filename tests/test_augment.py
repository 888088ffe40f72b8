"""Data augmentation (`data.augment`): labels kept, entity tags aligned, only the question of a QA row rewritten,
validation and test untouched, the result cached, and one clear line for what a task cannot take."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import RECIPES, tiny_qa_overrides, write_recipe
from test_bad_input import assert_user_error
from test_token_classification import args, conll_files, settings

from llmtune import load_recipe
from llmtune.data import augment
from llmtune.engine.preparation import prepare

LEXICON = """wonderful, marvellous, great
film, movie, picture
dull, boring, tedious
loved, adored
waste, squandering
"""


def entities(words: list[str], tags: list[str]) -> list[tuple]:
    """The entities of a tagged sentence, as (words, tags) runs: B- and the I- that follow it."""
    runs, current = [], None
    for word, tag in zip(words, tags):
        if tag.startswith("B-"):
            current = [(word, tag)]
            runs.append(current)
        elif tag.startswith("I-"):
            assert current is not None, f"I- tag after O: {list(zip(words, tags))}"
            current.append((word, tag))
        else:
            current = None
    return [tuple(run) for run in runs]


def ner_fields() -> augment.AugmentFields:
    names = ["O", "B-person", "I-person", "B-location", "I-location"]
    return augment.AugmentFields(
        words="tokens",
        tags="tags",
        outside=frozenset({"O", 0}),
        continues=frozenset(x for i, n in enumerate(names) if n.startswith("I-") for x in (n, i)),
    )


@pytest.mark.parametrize("name", ["random_swap", "random_delete", "random_insert", "synonym"])
def test_word_operations_keep_every_entity_whole_and_its_tags_aligned(name):
    lexicon = {"visited": ["saw"], "the": ["a"], "lives": ["dwells"], "in": ["at"]}
    operation = {
        "random_swap": augment.swap,
        "random_delete": augment.delete,
        "random_insert": lambda *a: augment.insert(*a, None),
        "synonym": lambda *a: augment.replace(*a, lexicon),
    }[name]
    sentences = [
        (
            ["Paul", "Walker", "visited", "the", "Empire", "State", "Building", "."],
            ["B-person", "I-person", "O", "O", "B-location", "I-location", "I-location", "O"],
        ),
        (["Mary", "lives", "in", "Paris"], ["B-person", "O", "O", "B-location"]),
    ]
    rng, changed = random.Random(0), 0
    for _ in range(200):
        for words, tags in sentences:
            new = augment._word_edit({"tokens": words, "tags": tags}, ner_fields(), operation, 0.5, rng)
            if new is None:
                continue
            changed += 1
            assert len(new["tokens"]) == len(new["tags"])
            assert sorted(entities(new["tokens"], new["tags"])) == sorted(entities(words, tags))
    assert changed > 100  # the operation did something


@pytest.fixture()
def augmented_sentiment(tiny_bert, sentiment_files, tmp_path):
    """A sentiment recipe with three methods, one of them reading a lexicon file relative to the recipe."""
    (tmp_path / "synonyms.txt").write_text(LEXICON)
    extra = """  augment:
    - {type: random_swap, probability: 0.3}
    - {type: synonym, lexicon: synonyms.txt, share: 0.5}
    - {type: random_delete, probability: 0.2}
"""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_bert, sentiment_files)
    recipe.write_text(recipe.read_text().replace("data:\n", "data:\n" + extra, 1))
    return recipe


def test_augmented_rows_keep_their_labels_and_validation_and_test_are_untouched(augmented_sentiment, cli):
    code, out, err = cli("train", augmented_sentiment)
    assert code == 0, err
    run = augmented_sentiment.parent / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    counts = metrics["train"]["augmented_rows"]
    assert set(counts) == {"random_swap", "synonym", "random_delete"}
    assert 0 < counts["synonym"] <= 16 and 0 < counts["random_swap"] <= 32 and 0 < counts["random_delete"] <= 32
    assert f"random_swap +{counts['random_swap']} rows" in out
    assert f"training: {32 + sum(counts.values())} examples" in out
    assert metrics["validation"]["num_examples"] == 32 and metrics["test"]["num_examples"] == 32

    recipe = load_recipe(augmented_sentiment)
    prepared = prepare(recipe)
    original = prepared.splits["train"]
    fields = prepared.task.augment_fields(original.column_names)
    train, cached = augment.apply(original, recipe.data.augment, fields, 42, echo=print)
    assert cached == counts
    assert train[: len(original)] == original[:]  # the original rows come first, as they were
    labels = {text: label for text, label in zip(original["text"], original["label"])}
    for row in train.select(range(len(original), len(train))):
        # each new row is nearest (in shared words) to the original it came from, and carries its label
        nearest = max(labels, key=lambda text: len(set(text.lower().split()) & set(row["text"].lower().split())))
        assert row["label"] == labels[nearest], row
        assert row["text"] not in labels


def test_the_cache_is_reused_and_a_changed_method_is_recomputed(augmented_sentiment, monkeypatch):
    recipe = load_recipe(augmented_sentiment)
    prepared = prepare(recipe)
    train = prepared.splits["train"]
    fields = prepared.task.augment_fields(train.column_names)
    first, counts = augment.apply(train, recipe.data.augment, fields, 7, echo=print)

    def fail(*args):
        raise AssertionError("augmented again instead of reading the cache")

    with monkeypatch.context() as patched:
        patched.setattr(augment, "_augmented", fail)
        again, cached = augment.apply(train, recipe.data.augment, fields, 7, echo=print)
        assert again[:] == first[:] and cached == counts
        changed = [method.model_copy(update={"probability": 0.5}) for method in recipe.data.augment]
        with pytest.raises(AssertionError, match="instead of reading the cache"):
            augment.apply(train, changed, fields, 7, echo=print)
        with pytest.raises(AssertionError, match="instead of reading the cache"):
            augment.apply(train, recipe.data.augment, fields, 8, echo=print)  # another seed


@pytest.fixture(scope="module")
def tiny_translator(tmp_path_factory) -> Path:
    """A random 1-layer BERT2BERT with MiniLM's tokenizer: writes nonsense, but through the real generate path."""
    import torch
    from conftest import minilm_dir
    from transformers import AutoTokenizer, BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("translator")
    part = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**part), BertConfig(**part, is_decoder=True, add_cross_attention=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config.decoder_start_token_id, config.pad_token_id = tokenizer.cls_token_id, tokenizer.pad_token_id
    config.eos_token_id = tokenizer.sep_token_id
    EncoderDecoderModel(config=config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_qa_back_translation_rewrites_the_question_and_never_the_context_or_answers(tiny_bert, tiny_translator):
    models = f"forward: {tiny_translator}, backward: {tiny_translator}"
    augment_value = f"[{{type: back_translation, {models}, max_new_tokens: 8}}]"
    recipe = load_recipe(RECIPES / "qa.yaml", [*tiny_qa_overrides(tiny_bert), f"data.augment={augment_value}"])
    prepared = prepare(recipe)
    original = prepared.splits["train"]
    fields = prepared.task.augment_fields(original.column_names)
    train, counts = augment.apply(original, recipe.data.augment, fields, 1, echo=print)
    assert counts["back_translation"] > 0 and len(train) == len(original) + counts["back_translation"]
    by_question = {row["id"]: row for row in original}
    for row in train.select(range(len(original), len(train))):
        source = by_question[row["id"]]
        assert row["context"] == source["context"] and row["answers"] == source["answers"]
        assert row["question"] != source["question"] and row["question"].strip()


def test_a_nested_translation_column_has_only_its_source_language_rewritten(tiny_bert, tmp_path):
    rows = [{"translation": {"de": f"ein kleiner hund läuft schnell {i}", "en": f"a small dog runs fast {i}"}}
            for i in range(8)]  # fmt: skip
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = load_recipe(RECIPES / "translation.yaml", [
        f"model.name={tiny_bert}", f"model.decoder={tiny_bert}", f"data.train={tmp_path / 'train.jsonl'}",
        f"data.validation={tmp_path / 'validation.jsonl'}", "data.test=null", "data.augment=[{type: random_swap}]",
    ])  # fmt: skip
    prepared = prepare(recipe)
    original = prepared.splits["train"]
    fields = prepared.task.augment_fields(original.column_names)
    assert fields.texts == (("translation", "de"),)
    train, counts = augment.apply(original, recipe.data.augment, fields, 3, echo=print)
    assert counts["random_swap"] == 8 and original[:] == train[:8]  # the originals are untouched
    for row, source in zip(train.select(range(8, 16)), rows):
        assert row["translation"]["en"] == source["translation"]["en"]
        assert sorted(row["translation"]["de"].split()) == sorted(source["translation"]["de"].split())
        assert row["translation"]["de"] != source["translation"]["de"]


def test_masked_lm_synonyms_replace_words_by_whole_words(tmp_path, sentiment_files):
    import torch
    from conftest import minilm_dir
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = tmp_path / "mlm"
    BertForMaskedLM(
        BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(model)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(model)
    rows = [{"text": "a wonderful moving film", "label": 1}, {"text": "dull and far too long", "label": 0}]
    fields = augment.AugmentFields(texts=("text",))
    new = augment.MaskedLmSynonyms(str(model), "data.augment[0]").rows(rows, fields, 0.25, random.Random(0))
    for row, source in zip(new, rows):
        words, before = row["text"].split(), source["text"].split()
        assert len(words) == len(before) and row["label"] == source["label"]
        replaced = [word for word, old in zip(words, before) if word != old]
        assert len(replaced) == 1 and augment.WORDY.match(replaced[0])


def test_augmentation_models_are_found_like_model_name_offline():
    """A hub id works offline through its installed package, as for model.name; an unknown one is one line."""
    rows = [{"text": "a wonderful moving film", "label": 1}]
    fields = augment.AugmentFields(texts=("text",))
    synonyms = augment.MaskedLmSynonyms("sentence-transformers/all-MiniLM-L6-v2", "data.augment[0] (synonym)")
    [row] = synonyms.rows(rows, fields, 0.25, random.Random(0))
    assert len(row["text"].split()) == 4 and row["text"] != rows[0]["text"]
    with pytest.raises(augment.UserError) as raised:
        augment.Translator("nobody/no-such-model", None, None, "data.augment[1] (back_translation).forward")
    assert str(raised.value).startswith(
        "data.augment[1] (back_translation).forward: 'nobody/no-such-model' is not available offline"
    )


# --------------------------------------------------------------------------- refused clearly


def test_back_translation_is_refused_for_word_tags(tiny_bert, tmp_path, cli):
    items = settings(
        tiny_bert,
        conll_files(tmp_path),
        tmp_path / "run",
        "data.augment=[{type: back_translation, forward: x, backward: y}]",
    )
    assert_user_error(
        cli("train", RECIPES / "ner.yaml", *args(items)),
        "data.augment[0]: back_translation cannot keep a translation's words aligned",
    )
    assert not (tmp_path / "run").exists()


def test_ner_trains_with_word_operations(tiny_bert, tmp_path, cli):
    items = settings(
        tiny_bert,
        conll_files(tmp_path),
        tmp_path / "run",
        "data.augment=[{type: random_swap}, {type: random_insert, probability: 0.2}]",
    )
    code, out, err = cli("train", RECIPES / "ner.yaml", *args(items))
    assert code == 0, err
    counts = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["augmented_rows"]
    assert counts["random_swap"] > 0 and counts["random_insert"] > 0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("[{type: synonym, lexicon: missing.txt}]", "data.augment[0] (synonym): lexicon"),
        ("[{type: synonym}]", "give exactly one of `lexicon`"),
        ("[{type: shuffle}]", "data.augment.0"),
        ("[{type: random_swap, probability: 2}]", "probability"),
    ],
    ids=["missing-lexicon", "no-source", "unknown-method", "bad-probability"],
)
def test_bad_augment_settings_are_one_line(value, fragment, augmented_sentiment, cli):
    assert_user_error(cli("train", augmented_sentiment, "--set", f"data.augment={value}"), fragment)
    assert not (augmented_sentiment.parent / "run").exists()


def test_rewriting_a_nested_text_leaves_the_row_it_was_copied_from_as_it_was():
    """Several methods augment the same source rows: one must not see another's rewrite."""
    row = {"translation": {"de": "ein hund", "en": "a dog"}}
    copy = dict(row)
    augment.write_text(copy, ("translation", "de"), "hund ein")
    assert row["translation"] == {"de": "ein hund", "en": "a dog"}
    assert copy["translation"] == {"de": "hund ein", "en": "a dog"}
