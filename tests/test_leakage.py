"""The leakage audit between splits (`data.leakage`): exact and near duplicates, what the task says to compare,
the warning, the refusal (validate --strict, data.leakage: refuse) and metrics.json's record."""

from __future__ import annotations

import json
import random
import warnings

import pytest
from conftest import write_recipe

from llmtune import tasks
from llmtune.common.errors import DataWarning, UserError
from llmtune.data import leakage
from llmtune.data.reading import in_memory

LONG = "the film follows two brothers who grow up on a farm and slowly learn to forgive their father for leaving"
NEAR = "the film follows two brothers who grow up on a farm and slowly learn to forgive their mother for leaving"


def splits_of(**columns_by_split) -> dict:
    return {split: in_memory(columns) for split, columns in columns_by_split.items()}


def test_exact_after_normalisation_and_near_duplicates_are_counted_in_the_later_split():
    splits = splits_of(
        train={"text": [LONG, "Great film!", "a quiet, patient portrait of grief"]},
        validation={"text": ["great   FILM", NEAR, "something else entirely, about cars and speed"]},
    )
    results = leakage.audit(splits, [("text",)])
    pair = results["train/validation"]
    assert (sorted(pair.exact_rows), sorted(pair.near_rows)) == ([0], [1])
    entry = pair.as_dict()
    assert (entry["exact"], entry["near"], entry["compared"]) == (1, 1, [3, 3])
    near = next(m for m in pair.examples if m.kind == "near")
    assert (near.later_row, near.earlier_row) == (1, 0) and near.similarity == pytest.approx(17 / 21)


def test_the_similarity_join_finds_every_pair_a_brute_force_search_finds():
    """Prefix filtering may skip a pair only when it cannot reach the threshold: compare with all pairs."""
    generator = random.Random(3)
    vocabulary = [f"w{i}" for i in range(40)]
    earlier = [" ".join(generator.choices(vocabulary, k=generator.randint(3, 25))) for _ in range(300)]
    later = []
    for _ in range(200):  # edited copies (a word changed, dropped or added) and fresh texts
        words = generator.choice(earlier).split()
        edit = generator.randrange(4)
        position = generator.randrange(len(words))
        if edit == 0:
            words[position] = generator.choice(vocabulary)
        elif edit == 1 and len(words) > 2:
            del words[position]
        elif edit == 2:
            words.insert(position, generator.choice(vocabulary))
        else:
            words = generator.choices(vocabulary, k=len(words))
        later.append(" ".join(words))
    found = leakage.near_matches(earlier, later)
    for row, text in enumerate(later):
        grams = leakage.shingles(text)
        scores = [len(grams & leakage.shingles(e)) / len(grams | leakage.shingles(e)) for e in earlier]
        best = max(scores)
        if best >= leakage.NEAR_JACCARD:
            assert row in found and found[row][1] == pytest.approx(best), (row, text)
        else:
            assert row not in found
    assert sum(1 for row in found) > 50  # the check above ran on many matches


def test_each_task_names_the_texts_that_identify_an_example():
    def create(**options):
        task = tasks.TASKS[options["type"]]
        return task.create(task.options_class(**options))

    pair = create(type="classification", text_column="premise", text_pair_column="hypothesis")
    assert pair.leakage_fields(["premise", "hypothesis", "label"]) == [("premise", "hypothesis")]
    qa = create(type="question_answering")
    assert qa.leakage_fields(["question", "context", "answers"]) == [("context",), ("question",)]
    translation = create(type="translation", source_lang="en", target_lang="de")
    assert translation.leakage_fields(["translation"]) == [(("translation", "en"),)]
    ner = create(type="token_classification")
    assert ner.leakage_fields(["tokens", "tags"]) == [("tokens",)]


def test_groups_are_compared_apart_and_nested_and_listed_texts_are_read():
    qa_splits = splits_of(
        train={"context": ["Paris is the capital of France."], "question": ["What is the capital?"]},
        test={"context": ["paris is the capital of france"], "question": ["Who wrote it?"]},
    )
    entry = leakage.audit(qa_splits, [("context",), ("question",)])["train/test"].as_dict()
    assert entry["exact"] == 1 and entry["fields"] == {
        "context": {"exact": 1, "near": 0},
        "question": {"exact": 0, "near": 0},
    }
    nested = splits_of(
        train={"translation": [{"en": "A dog runs.", "de": "Ein Hund läuft."}], "tokens": [["A", "dog", "runs", "."]]},
        validation={"translation": [{"en": "a dog runs", "de": "Anders."}], "tokens": [["a", "dog", "runs"]]},
    )
    assert len(leakage.audit(nested, [(("translation", "en"),)])["train/validation"].exact_rows) == 1
    assert len(leakage.audit(nested, [("tokens",)])["train/validation"].exact_rows) == 1


def test_above_the_threshold_it_warns_once_or_refuses_and_below_it_stays_silent():
    splits = splits_of(
        train={"text": [f"review number {i} of a film" for i in range(200)]},
        validation={"text": ["review number 7 of a film"] + [f"another text {i}" for i in range(99)]},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        leakage.check(splits, [("text",)], "warn", threshold=0.01)  # 1 of 100: not above 1%
    assert caught == []
    with pytest.warns(DataWarning) as shown:
        leakage.check(splits, [("text",)], "warn", threshold=0.005)
    assert len(shown) == 1
    assert str(shown[0].message).startswith("data: 1 exact and 0 near duplicates of validation rows in train")
    with pytest.raises(
        UserError, match=r"data.leakage_threshold \(0.005\).*refused \(data.leakage: refuse, or validate --strict\)"
    ):
        leakage.check(splits, [("text",)], "refuse", threshold=0.005)
    assert leakage.check(splits, [("text",)], "off", threshold=0.0) == {}


def test_validate_shows_counts_and_examples_and_strict_refuses_in_one_line(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("validate", recipe)
    assert code == 0, err
    assert "  leakage train/validation: 32 exact, 0 near duplicates of 32 validation rows in 32 train rows" in out
    assert "    exact, text: validation row 1 'a wonderful moving film' ~ train row 1 'a wonderful moving film'" in out
    assert "leakage validation/test: 32 exact" in out
    code, out, err = cli("validate", recipe, "--strict")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: data: 32 exact and 0 near duplicates of validation rows in train (of 32 validation")
    assert "refused (data.leakage: refuse, or validate --strict)" in err


def test_train_refuses_with_the_recipe_key_and_records_the_counts_in_metrics(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "data.leakage=refuse")
    assert (
        code == 2
        and len(err.strip().splitlines()) == 1
        and "refused (data.leakage: refuse, or validate --strict)" in err
    )
    assert not (tmp_path / "run").exists()
    code, out, err = cli("train", recipe, "--set", "training.max_steps=1")
    assert code == 0, err
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["leakage"]
    assert set(recorded) == {"train/validation", "train/test", "validation/test"}
    assert {k: recorded["train/test"][k] for k in ("exact", "near", "compared")} == {
        "exact": 32,
        "near": 0,
        "compared": [32, 32],
    }


def test_the_report_fragment_shows_the_counts_and_escapes_the_examples():
    from llmtune.reports.leakage import leakage_html

    splits = splits_of(train={"text": ["<b>bold</b> claim & more"]}, test={"text": ["b bold b claim more"]})
    metrics = {"leakage": {name: pair.as_dict() for name, pair in leakage.audit(splits, [("text",)]).items()}}
    fragment = leakage_html(json.loads(json.dumps(metrics)))  # as read back from metrics.json
    assert "<td>train/test</td><td>1 train / 1 test</td><td>1</td><td>0</td><td>100.0%</td>" in fragment
    assert "train/test (exact, text): test row 1 <q>b bold b claim more</q> ~ train row 1" in fragment
    metrics["leakage"]["train/test"]["examples"][0]["test"][1] = "<script>x</script>"
    assert "<q>&lt;script&gt;x&lt;/script&gt;</q>" in leakage_html(metrics)  # texts are escaped
    assert leakage_html({"test": {}}) == ""


def test_a_bare_off_in_yaml_turns_the_audit_off(tiny_bert, sentiment_files, tmp_path):
    """YAML reads `off` as false; the recipe takes it as the value it looks like."""
    from llmtune.recipe import load_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    assert load_recipe(recipe, ["data.leakage=off"]).data.leakage == "off"
    with pytest.raises(UserError, match="data.leakage"):
        load_recipe(recipe, ["data.leakage=true"])


def test_the_leakage_entry_is_not_a_split_to_the_report_or_the_model_card(cli, tiny_bert, sentiment_files, tmp_path):
    import yaml

    from llmtune.deploy.hub import model_card
    from llmtune.recipe import load_recipe
    from llmtune.reports.report import report_blocks

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    code, out, err = cli("train", recipe, "--set", "training.max_steps=1")
    assert code == 0, err
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "leakage" in metrics
    table = next(block for block in report_blocks(run, {}) if block[0] == "table")
    assert [row[0] for row in table[2]] == ["validation", "test"]
    card = model_card(load_recipe(run / "recipe.yaml"), metrics, "an-org/a-model", adapter=False)
    results = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    assert [result["dataset"]["split"] for result in results] == ["validation", "test"]
