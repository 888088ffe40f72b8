"""Extractive question answering: the SQuAD metric, windows over long contexts, decoding, the CLI."""

from __future__ import annotations

import collections
import json
import re
import string

import pytest
import torch
from conftest import RECIPES, SHARED_DATA

from llmtune import UserError, load_recipe
from llmtune.data.reading import read_file
from llmtune.metrics.squad import squad_scores
from llmtune.tasks.question_answering import QuestionAnswering, QuestionAnsweringOptions


# The official SQuAD v1.1 evaluation script's logic (evaluate-v1.1.py), verbatim, as the reference.
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


# (prediction, golds, exact match, F1) checked by hand.
CASES = [
    ("the Eiffel Tower", ["Eiffel Tower"], 1, 1.0),  # articles
    ("Eiffel Tower!", ["eiffel tower"], 1, 1.0),  # punctuation, case
    ("in 1889", ["1889"], 0, 2 / 3),  # precision 1/2, recall 1
    ("Paris", ["London", "Paris, France"], 0, 2 / 3),  # best of several golds
    ("an apple", ["apple", "a red apple"], 1, 1.0),
    ("", ["anything"], 0, 0.0),  # empty prediction
    ("  New   York ", ["new york city"], 0, 0.8),  # white space; precision 1, recall 2/3
]


def test_squad_metric_matches_the_official_logic_and_hand_checked_values():
    for prediction, golds, exact, f1 in CASES:
        scores = squad_scores([prediction], [golds])
        assert scores["exact_match"] == pytest.approx(100 * exact)
        assert scores["f1"] == pytest.approx(100 * f1)
        assert scores["exact_match"] == pytest.approx(
            100 * max(official_exact_match_score(prediction, g) for g in golds)
        )
        assert scores["f1"] == pytest.approx(100 * max(official_f1_score(prediction, g) for g in golds))
    everything = squad_scores([c[0] for c in CASES], [c[1] for c in CASES])
    assert everything["exact_match"] == pytest.approx(100 * sum(c[2] for c in CASES) / len(CASES))
    assert everything["f1"] == pytest.approx(100 * sum(c[3] for c in CASES) / len(CASES))


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def qa_task(**options) -> QuestionAnswering:
    return QuestionAnswering(QuestionAnsweringOptions(type="question_answering", **options))


def long_example():
    filler = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(60))
    context = filler + " The treasure is buried under the old oak tree. " + filler
    answer = "under the old oak tree"
    return {
        "id": "q1",
        "question": "Where is the treasure buried?",
        "context": context,
        "answers": {"text": [answer], "answer_start": [context.index(answer)]},
    }


def test_answer_beyond_the_first_window_is_labelled_in_a_later_window(tokenizer):
    import datasets

    example = long_example()
    windows = qa_task(doc_stride=32).preprocess(datasets.Dataset.from_list([example]), tokenizer, max_length=128)
    assert len(windows) > 5
    assert windows[0]["start_positions"] == windows[0]["end_positions"] == 0  # no answer in the first window: CLS
    found = [w for w in windows if w["start_positions"] > 0]
    assert found, "no window holds the answer"
    for window in found:
        offsets = window["offset_mapping"]
        assert (
            example["context"][offsets[window["start_positions"]][0] : offsets[window["end_positions"]][1]]
            == "under the old oak tree"
        )


def test_every_gold_span_of_xquad_maps_to_a_window_that_contains_it(tokenizer):
    examples = read_file(str(SHARED_DATA / "xquad" / "xquad.en.json"), "xquad", QuestionAnswering.file_readers).select(
        range(300)
    )
    windows = qa_task(doc_stride=32).preprocess(examples, tokenizer, max_length=96)
    assert len(windows) > 2 * len(examples)  # short windows: most contexts are split
    labelled: dict[int, list[str]] = collections.defaultdict(list)
    for example, start, end, offsets in zip(
        windows["example_index"], windows["start_positions"], windows["end_positions"], windows["offset_mapping"]
    ):
        if start > 0:
            labelled[example].append(examples[example]["context"][offsets[start][0] : offsets[end][1]])
    exact = 0
    for index, example in enumerate(examples):
        gold = example["answers"]["text"][0]
        assert labelled[index], f"example {index}: no window holds {gold!r}"
        assert all(gold in span for span in labelled[index])
        exact += all(span == gold for span in labelled[index])
    assert exact >= 0.97 * len(examples)  # the rest: answers that start or end inside a word piece


def test_decoding_picks_the_best_span_across_windows(tokenizer):
    """Logits that point at the gold span decode to the gold text, whichever window holds it."""
    import datasets

    example = long_example()
    dataset = datasets.Dataset.from_list([example])
    task = qa_task(doc_stride=32)
    windows = task.preprocess(dataset, tokenizer, max_length=128)
    accumulator = task.new_accumulator(("exact_match", "f1", "cross_entropy"))
    for window in windows:
        width = len(window["input_ids"])
        start_logits, end_logits = torch.zeros(1, width), torch.zeros(1, width)
        start_logits[0, window["start_positions"]] = 10.0 if window["start_positions"] else 0.0
        end_logits[0, window["end_positions"]] = 10.0 if window["end_positions"] else 0.0
        k = 5
        top_start, top_end = start_logits.topk(k), end_logits.topk(k)
        accumulator.add(
            {
                "index": torch.tensor([window["index"]]),
                "start_index": top_start.indices,
                "start_logit": top_start.values,
                "end_index": top_end.indices,
                "end_logit": top_end.values,
                "normaliser": start_logits.logsumexp(-1) + end_logits.logsumexp(-1),
                "loss": torch.zeros(1),
            }
        )
    metrics, predictions = accumulator.result(dataset, windows)
    assert predictions[0]["predicted"] == "under the old oak tree"
    span = predictions[0]["span"]
    assert example["context"][span["start"] : span["end"]] == "under the old oak tree"
    assert 0.9 < predictions[0]["score"] <= 1  # the gold span holds nearly all of the probability
    assert predictions[0]["metrics"] == {"exact_match": 100.0, "f1": 100.0}
    assert metrics["exact_match"] == 100 and metrics["f1"] == 100


def test_misaligned_answers_are_skipped_for_training_with_a_warning(tmp_path):
    import datasets

    from llmtune.common.errors import DataWarning
    from llmtune.data.schema import DataSource, DataSpec

    good = long_example()
    bad = {**good, "id": "q2", "answers": {"text": ["nowhere to be seen"], "answer_start": [5]}}
    splits = {"train": datasets.Dataset.from_list([good, bad, bad])}
    spec = DataSpec(train=DataSource(path=str(tmp_path / "train.jsonl")))
    with pytest.warns(DataWarning, match="2 of 3 examples have no answer that occurs at its answer_start; skipped"):
        qa_task().prepare(splits, spec)
    assert splits["train"]["id"] == ["q1"]
    with pytest.raises(UserError, match="none of the 2 answers occurs in its context"):
        qa_task().prepare({"train": datasets.Dataset.from_list([bad, bad])}, spec)


def write_qa_files(tmp_path, rows):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"task.doc_stride": 200}, "task.doc_stride (200) must be smaller than training.max_length (128)"),
        ({"task.question_column": "query"}, "column 'query' (task.question_column) not found"),
        ({"empty_context": True}, "line 2: empty context in column 'context'"),
    ],
)
def test_bad_qa_input(cli, tiny_bert, tmp_path, change, expected):
    example = long_example()
    rows = [example, {**example, "context": "   "}] if change.get("empty_context") else [example] * 2
    data = write_qa_files(tmp_path, rows)
    sets = [
        f"data.train={data}",
        "data.validation=null",
        "data.test=null",
        f"model.name={tiny_bert}",
        "training.max_length=128",
        "task.doc_stride=32",
        f"output_dir={tmp_path / 'run'}",
    ]
    sets += [f"{key}={value}" for key, value in change.items() if "." in key]
    code, out, err = cli("train", RECIPES / "qa.yaml", *[arg for item in sets for arg in ("--set", item)])
    assert code == 2, err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_qa_recipe_trains_evaluates_and_answers(cli, tiny_bert, tmp_path):
    xquad = SHARED_DATA / "xquad" / "xquad.en.json"
    sets = [
        f"model.name={tiny_bert}",
        f"data.train={xquad}",
        "data.train.max_samples=24",
        f"data.validation={xquad}",
        "data.validation.max_samples=8",
        f"data.test={xquad}",
        "data.test.max_samples=8",
        "training.max_length=128",
        "task.doc_stride=32",
        "training.min_steps=null",
        "training.epochs=1",
        "training.batch_size=8",
        f"output_dir={tmp_path / 'run'}",
    ]
    args = [arg for item in sets for arg in ("--set", item)]
    code, out, err = cli("validate", RECIPES / "qa.yaml", *args)
    assert code == 0, err
    code, out, err = cli("train", RECIPES / "qa.yaml", *args)
    assert code == 0, err
    test_line = next(line for line in out.splitlines() if line.startswith("test: "))
    assert "exact_match=" in test_line and "f1=" in test_line and "cross_entropy=" in test_line
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8
    assert set(predictions[0]) == {"index", "id", "inputs", "reference", "predicted", "score", "metrics", "span"}
    assert set(predictions[0]["inputs"]) == {"question", "context"} and set(predictions[0]["metrics"]) == {
        "exact_match",
        "f1",
    }
    code, out, err = cli("eval", tmp_path / "run", "--split", "test")
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert f"f1={saved['f1']:.4f}" in out
    code, out, err = cli(
        "predict",
        tmp_path / "run",
        "--question",
        "Where is the treasure?",
        "--context",
        "The treasure is under the oak tree.",
    )
    assert code == 0, err
    answer = json.loads(out)
    context = "The treasure is under the oak tree."
    assert answer["predicted"] == context[answer["span"]["start"] : answer["span"]["end"]] and 0 < answer["score"] <= 1


@pytest.mark.slow
def test_minilm_learns_squadshifts_and_answers_xquad(tmp_path):
    """Real learning: 1,600 SQuADShifts questions, one epoch (142 steps, about 6 minutes on one thread), scored on
    the first 200 XQuAD-en questions: issue #34's setting with the head at its own rate (3e-3). Over seeds 1-5
    (`bash benchmarks/seed_study.sh qa OUT --set training.min_steps=null`) F1 was 22.8/32.2/24.0/22.6/14.7
    and exact match 15.0/23.5/14.0/14.0/8.5; without the head rate 21.7/26.7/14.0/15.3/11.8. The thresholds sit
    2.5 points under the lowest seed. The recipe's training.min_steps: 300 is far more stable (docs/benchmarks.md)
    but would double the test's time, so the test turns it off."""
    from llmtune import train

    recipe = load_recipe(
        RECIPES / "qa.yaml",
        [
            f"data.train={SHARED_DATA / 'squadshifts' / 'new_wiki_v1.0.json'}",
            "data.train.max_samples=1600",
            f"data.validation={SHARED_DATA / 'xquad' / 'xquad.en.json'}",
            "data.validation.max_samples=200",
            "data.test=null",
            "training.epochs=1",
            "training.max_length=192",
            "task.doc_stride=64",
            "training.batch_size=16",
            "training.learning_rate=3e-4",
            "training.head_learning_rate=3e-3",
            "training.min_steps=null",  # the recipe's 300 would double the test's time
            "training.warmup_ratio=0.1",
            "evaluation.every_n_steps=null",
            "checkpointing.at_epoch_end=false",
        ],
    )
    result = train(recipe, output_dir=tmp_path / "qa", echo=lambda *a: None)
    validation = result.metrics["validation"]
    assert validation["num_examples"] == 200
    assert validation["f1"] > 12, validation
    assert validation["exact_match"] > 6, validation


def report_column(text: str, title: str, column: str) -> list[str]:
    """The cells of one column in the Markdown report table under a heading that starts with `title`."""
    lines = text[text.index(title) :].splitlines()[1:]
    table = [line for line in lines[next(i for i, line in enumerate(lines) if line.startswith("|")) :]]
    table = table[: next((i for i, line in enumerate(table) if not line.startswith("|")), len(table))]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    return [row.strip("|").split("|")[header.index(column)].strip() for row in table[2:]]


def test_report_of_a_real_qa_run_lists_the_worst_answers_by_f1_first(cli, tiny_bert, tmp_path):
    """A tiny model that half-learned 16 questions: its answers range from wrong to right, and the report's
    sample lists them from the lowest F1 up (among equal F1, the most confident first)."""
    xquad = SHARED_DATA / "xquad" / "xquad.en.json"
    sets = [
        f"model.name={tiny_bert}",
        f"data.train={xquad}",
        "data.train.max_samples=16",
        "data.validation=null",
        f"data.test={xquad}",
        "data.test.max_samples=16",
        "training.max_length=128",
        "task.doc_stride=32",
        "training.min_steps=null",
        "training.epochs=12",
        "training.batch_size=8",
        "training.learning_rate=3e-3",
        f"output_dir={tmp_path / 'run'}",
    ]
    code, out, err = cli("train", RECIPES / "qa.yaml", *[arg for item in sets for arg in ("--set", item)])
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    scores = sorted(row["metrics"]["f1"] for row in rows)
    assert len(set(scores)) > 1, scores  # a spread to sort
    code, out, err = cli("report", tmp_path / "run", "--format", "md", "--output", tmp_path / "report.md")
    assert code == 0, err
    shown = [
        float(cell) for cell in report_column((tmp_path / "report.md").read_text(), "### Worst answers first", "f1")
    ]
    assert shown == pytest.approx(scores[: len(shown)], abs=0.006) and len(shown) == 10
