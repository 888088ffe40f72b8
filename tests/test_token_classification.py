"""Named-entity recognition (token classification): CoNLL and JSON data, sub-token labels, windows over long
sentences, seqeval metrics, entities with character spans from `llmtune predict`, reports, bad input; a real
learning test with MiniLM on WNUT 2017."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES, SHARED_DATA
from test_bad_input import assert_user_error

from llmtune import load_recipe, predict, train

WNUT = SHARED_DATA / "wnut17"
CONLL = """-DOCSTART-\tO

Paul\tB-person
Walker\tI-person
visited\tO
the\tO
Empire\tB-location
State\tI-location
Building\tI-location
.\tO
\t
Apple\tB-corporation
sells\tO
phones\tO
   \t
Mary\tB-person
lives\tO
in\tO
Paris\tB-location
"""


def conll_files(folder, repeat: int = 6):
    """train/validation/test .conll files of the small corpus above (train repeated)."""
    files = {}
    body = CONLL.split("\n", 2)[2]  # without -DOCSTART-
    for split, times in (("train", repeat), ("validation", 1), ("test", 1)):
        files[split] = folder / f"{split}.conll"
        files[split].write_text("-DOCSTART-\tO\n\n" + "\n".join([body.strip("\n")] * times) + "\n")
    return files


def settings(model, files, run, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"data.test={files['test']}",
        "task.tags_column=tags",
        "training.epochs=3",
        "training.batch_size=4",
        "training.learning_rate=3e-3",
        "training.max_length=32",
        "task.stride=8",
        f"output_dir={run}",
        *extra,
    ]


def args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --------------------------------------------------------------------------- data


def test_conll_reader_splits_sentences_on_blank_and_whitespace_lines_and_skips_docstart(tmp_path):
    from llmtune.tasks.token_classification import read_conll

    path = tmp_path / "a.conll"
    path.write_text(CONLL.replace("Apple\tB-corporation", "Apple B-corporation"))  # a space separates it, too
    dataset = read_conll(path, "data.train")
    assert dataset["tokens"] == [
        ["Paul", "Walker", "visited", "the", "Empire", "State", "Building", "."],
        ["Apple", "sells", "phones"],
        ["Mary", "lives", "in", "Paris"],
    ]
    assert dataset["tags"][1] == ["B-corporation", "O", "O"]
    assert dataset["line"] == [3, 12, 16]  # where each sentence starts, for messages


def test_first_subtoken_carries_the_tag_and_the_rest_are_ignored_or_inside(tiny_bert):
    import datasets

    from llmtune.models.loading import load_tokenizer
    from llmtune.models.sources import Checkpoint
    from llmtune.tasks.token_classification import TokenClassification, TokenClassificationOptions

    tokenizer = load_tokenizer(Checkpoint("tiny", str(tiny_bert), "local directory"))
    words, tags = ["Schwarzenegger", "visited", "Kalamazoo"], ["B-person", "O", "B-location"]
    rows = datasets.Dataset.from_list([{"tokens": words, "tags": tags}])
    names = ["O", "B-location", "B-person", "I-location", "I-person"]
    for every, expected in ((False, [-100]), (True, [names.index("I-person")])):
        options = TokenClassificationOptions(
            type="token_classification", label_names=names, label_all_subtokens=every, stride=4
        )
        task = TokenClassification(options)
        window = task.preprocess(rows, tokenizer, 32)[0]
        pieces = tokenizer.convert_ids_to_tokens(window["input_ids"])
        first = pieces.index("schwarz")  # "Schwarzenegger" is three word pieces in MiniLM's vocabulary
        assert window["labels"][first] == names.index("B-person")
        assert window["labels"][first + 1] == expected[0]  # a later piece of the same word
        assert window["labels"][0] == -100 and window["labels"][-1] == -100  # [CLS], [SEP]
        assert window["word_ids"][first] == 0 and window["word_ids"][first + 1] == -1


def test_long_sentences_become_windows_and_every_word_is_predicted_once(tiny_bert):
    """A sentence far longer than max_length is read in overlapping windows; each word's prediction comes from
    the window where it has the most context, so no word is lost or predicted twice."""
    import datasets

    from llmtune.models.loading import load_tokenizer
    from llmtune.models.sources import Checkpoint
    from llmtune.tasks.token_classification import TokenClassification, TokenClassificationOptions

    tokenizer = load_tokenizer(Checkpoint("tiny", str(tiny_bert), "local directory"))
    words = [f"w{i}" if i % 7 != 3 else "Paris" for i in range(58)]
    tags = ["B-location" if word == "Paris" else "O" for word in words]
    dataset = datasets.Dataset.from_list([{"tokens": words, "tags": tags}])
    options = TokenClassificationOptions(type="token_classification", label_names=["O", "B-location"], stride=6)
    task = TokenClassification(options)
    windows = task.preprocess(dataset, tokenizer, 24)
    assert len(windows) > 3
    accumulator = task.new_accumulator(("f1", "precision", "recall", "token_accuracy", "cross_entropy"))
    for window in windows:
        # A model that is right only with 3 tokens of context on each side, and says O otherwise: the window
        # that gives each word the most context must be the one its prediction is read from.
        width = len(window["labels"])
        gold = [max(label, 0) if min(k, width - 1 - k) >= 3 else 0 for k, label in enumerate(window["labels"])]
        tag = torch.tensor([gold + [-1] * (24 - width)])
        accumulator.add(
            {
                "index": torch.tensor([window["index"]]),
                "tag": tag,
                "confidence": (tag >= 0).float(),
                "nll": torch.zeros(1),
                "labelled": torch.tensor([1]),
            }
        )
    metrics, rows = accumulator.result(dataset, windows)
    assert rows[0]["tags"] == tags and metrics["f1"] == 100 and metrics["token_accuracy"] == 100
    assert [e["text"] for e in rows[0]["predicted"]] == ["Paris"] * 8


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ner_run(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    run = folder / "run"
    recipe = load_recipe(RECIPES / "ner.yaml", settings(tiny_bert, conll_files(folder), run, "training.epochs=30"))
    return train(recipe).run_dir


def test_ner_recipe_trains_evaluates_and_predicts_entities_with_spans(ner_run, cli):
    import seqeval.metrics

    metrics = json.loads((ner_run / "metrics.json").read_text())["test"]
    assert {"f1", "precision", "recall", "token_accuracy", "cross_entropy", "per_type"} <= set(metrics)
    rows = [json.loads(line) for line in (ner_run / "predictions.jsonl").read_text().splitlines()]
    assert [row["inputs"]["text"] for row in rows][:2] == [
        "Paul Walker visited the Empire State Building .",
        "Apple sells phones",
    ]
    gold = [[tag for tag in row["tags"]] for row in rows]
    references = [line.split("\t")[1] for line in CONLL.splitlines()[2:] if line.strip() and "\t" in line.strip("\t ")]
    assert sum(map(len, gold)) == len(references)
    expected = 100 * seqeval.metrics.f1_score([[t for t in r] for r in _gold_tags(rows)], gold)
    assert metrics["f1"] == pytest.approx(expected, abs=1e-6)
    assert metrics["f1"] > 60, metrics  # the tiny model memorises the three sentences
    code, out, err = cli("predict", ner_run, "--text", "Paul Walker visited the Empire State Building .")
    assert code == 0, err
    row = json.loads(out)
    text = row["inputs"]["text"]
    for entity in row["predicted"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
    assert {"type": "person", "text": "Paul Walker"}.items() <= {**row["predicted"][0]}.items()


def _gold_tags(rows: list[dict]) -> list[list[str]]:
    """Each row's gold tags, rebuilt from its reference entities."""
    tags = []
    for row in rows:
        sentence = ["O"] * len(row["tokens"])
        starts = [len(" ".join(row["tokens"][:i])) + (1 if i else 0) for i in range(len(row["tokens"]))]
        for entity in row["reference"]:
            first, last = starts.index(entity["start"]), max(i for i, s in enumerate(starts) if s < entity["end"])
            sentence[first : last + 1] = ["B-" + entity["type"]] + ["I-" + entity["type"]] * (last - first)
        tags.append(sentence)
    return tags


def test_ner_run_reloads_with_plain_transformers(ner_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(ner_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(ner_run)
    words = "Mary lives in Paris".split()
    inputs = tokenizer(" ".join(words), return_tensors="pt")
    with torch.no_grad():
        tags = model(**inputs).logits[0].argmax(-1).tolist()
    first = {}
    for token, word in enumerate(inputs.word_ids(0)):
        if word is not None:
            first.setdefault(word, token)
    plain = [model.config.id2label[tags[first[i]]] for i in range(len(words))]
    assert plain == predict(ner_run, ["Mary lives in Paris"])[0]["tags"]


def test_ner_report_lists_the_sentences_with_most_entity_errors_first(ner_run, cli):
    code, out, err = cli("report", ner_run, "--format", "md", "--output", ner_run / "report.md")
    assert code == 0, err
    text = (ner_run / "report.md").read_text()
    assert "### Entities by type (test)" in text and "| person |" in text
    assert "![entity_f1]" in text and (ner_run / "entity_f1.png").is_file()
    rows = [json.loads(line) for line in (ner_run / "predictions.jsonl").read_text().splitlines()]
    section = text[text.index("Worst sentences first: highest entity_errors") :]
    table = section[: section.index("###", 3)]
    errors = [int(float(line.split("|")[-4])) for line in table.splitlines()[4:] if line.startswith("|")]
    assert errors == sorted(errors, reverse=True) and errors[0] == max(r["metrics"]["entity_errors"] for r in rows)


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_llama"])
def test_decoder_models_and_lora_train_for_ner(model, request, tmp_path, cli):
    path = request.getfixturevalue(model)
    run = tmp_path / "run"
    items = settings(path, conll_files(tmp_path), run, "method.type=lora", "method.target_modules=null")
    code, out, err = cli("train", RECIPES / "ner.yaml", *args(items))
    assert code == 0, err
    assert (
        "score" in json.loads((run / "adapter_config.json").read_text())["modules_to_save"]
        or "classifier" in (json.loads((run / "adapter_config.json").read_text())["modules_to_save"])
    )
    code, out, err = cli("predict", run, "--text", "Paul Walker visited Paris")
    assert code == 0, err
    assert len(json.loads(out)["tags"]) == 4


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("split", "content", "fragment"),
    [
        (
            "validation",
            "Paul\tB-person\nWalker\n",
            "line 2: expected a token and its tag separated by a tab or a space",
        ),
        ("validation", "Paul\tB-person\tNNP\n", "line 1: expected a token and its tag"),
        ("validation", "Mary\tO\nlives\tO\n\nPaul\tO\nWalker\tB-PER\n", "line 5: tag 'B-PER' is not among the tags"),
        ("train", "Mary\tO\n\nParis\tLOC\n", "line 3: tag 'LOC' is not an IOB2 tag; expected O, B-TYPE or I-TYPE"),
    ],
    ids=["missing-tag", "three-fields", "unknown-tag", "not-iob2"],
)
def test_bad_conll_is_one_line_naming_file_and_line(split, content, fragment, cli, tiny_bert, tmp_path):
    files = conll_files(tmp_path)
    bad = tmp_path / "bad.conll"
    bad.write_text(content)
    items = settings(tiny_bert, {**files, split: bad}, tmp_path / "run")
    assert_user_error(cli("validate", RECIPES / "ner.yaml", *args(items)), f"data.{split} ({bad}) {fragment}")
    assert_user_error(cli("train", RECIPES / "ner.yaml", *args(items)), f"data.{split} ({bad}) {fragment}")
    assert not (tmp_path / "run").exists()


def test_a_sentence_with_words_but_no_tags_is_one_line(cli, tiny_bert, tmp_path):
    files = conll_files(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"tokens": ["Paul", "Walker"], "tags": ["B-person", "I-person"]})
        + "\n"
        + json.dumps({"tokens": ["Mary", "lives"], "tags": []})
        + "\n"
    )
    items = settings(tiny_bert, {**files, "test": bad}, tmp_path / "run")
    assert_user_error(
        cli("validate", RECIPES / "ner.yaml", *args(items)),
        f"data.test ({bad}) line 2: 2 words but 0 tags in column 'tags'; expected a tag for every word",
    )


def test_integer_tags_need_label_names(cli, tiny_bert, tmp_path):
    rows = tmp_path / "ids.jsonl"
    rows.write_text("".join(json.dumps({"tokens": ["Paul", "sells"], "tags": [1, 0]}) + "\n" for _ in range(4)))
    files = {"train": rows, "validation": rows, "test": rows}
    items = settings(tiny_bert, files, tmp_path / "run")
    assert_user_error(
        cli("validate", RECIPES / "ner.yaml", *args(items)), "integer tags in column 'tags' need task.label_names"
    )
    code, out, err = cli("validate", RECIPES / "ner.yaml", *args(items), "--set", "task.label_names=[O, B-person]")
    assert code == 0, err


# --------------------------------------------------------------------------- real learning


def plain_word_tags(model, tokenizer, words: list[str]) -> list[str]:
    """Each word's tag with plain transformers: the words joined by spaces, each word read off its first sub-token
    (the token whose character span starts the word)."""
    text, starts, position = " ".join(words), [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    inputs = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=128, return_tensors="pt")
    offsets = inputs.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        tags = model(**inputs).logits[0].argmax(-1).tolist()
    first = {start: token for token, (start, end) in reversed(list(enumerate(offsets))) if end > start}
    return [model.config.id2label[tags[first[start]]] for start in starts]


@pytest.mark.slow
def test_minilm_learns_wnut17_and_reloads_with_plain_transformers(tmp_path):
    """MiniLM, full fine-tuning, the recipe's three epochs on the first 1,000 WNUT 2017 training sentences (issue
    #34's small-data setting, about 2 minutes on one thread): dev entity F1 over 5 seeds 39.44 +- 1.37, lowest
    37.46 (`bash benchmarks/seed_study.sh ner`), against 0 for a model that tags everything O. The threshold sits
    3.5 points (2.5 standard deviations) under the lowest seed."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    items = [
        f"data.train={WNUT / 'train.conll'}",
        "data.train.max_samples=1000",
        f"data.validation={WNUT / 'dev.conll'}",
        "data.test=null",
        "task.tags_column=tags",
        "evaluation.every_n_steps=null",
        "checkpointing.at_epoch_end=false",
    ]
    result = train(load_recipe(RECIPES / "ner.yaml", items), output_dir=tmp_path / "run")
    validation = result.metrics["validation"]
    assert validation["f1"] > 34 and validation["num_examples"] == 1009, validation
    assert set(validation["per_type"]) == {"corporation", "creative-work", "group", "location", "person", "product"}

    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()][:100]
    model = AutoModelForTokenClassification.from_pretrained(result.run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.run_dir)
    assert [plain_word_tags(model, tokenizer, row["tokens"]) for row in rows] == [row["tags"] for row in rows]
