"""Summarization and translation with encoder-decoder models: T5, BART, Marian and BERT2BERT, tiny and built
locally (no pretrained weights can be downloaded here) with tokenizers trained on the shared text, through the
real loading, training, generation and metric code; the built-in recipes; bad input; a real learning test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, SHARED_DATA

from llmtune import UserError, load_recipe

MULTI30K = SHARED_DATA / "multi30k"
SCITLDR = SHARED_DATA / "scitldr"


def sentences(count: int = 3000) -> list[str]:
    """English and German Multi30k captions and SciTLDR text: what the tiny tokenizers are trained on."""
    lines = []
    for name in ("train.en", "train.de"):
        lines += (MULTI30K / name).read_text(encoding="utf-8").splitlines()[:count]
    for line in (SCITLDR / "train.jsonl").read_text(encoding="utf-8").splitlines()[:200]:
        row = json.loads(line)
        lines += row["source"] + row["target"]
    return lines


def t5_checkpoint(path: Path) -> Path:
    """A 2-layer, 32-wide T5 with a T5Tokenizer (unigram pieces trained here, as T5's sentencepiece model is)."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(
        sentences(), vocab_size=1200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    pieces = [tuple(piece) for piece in json.loads(trainer.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bart_checkpoint(path: Path) -> Path:
    """A 2-layer, 32-wide BART with a byte-level BPE tokenizer trained here (BART's tokenizer is RoBERTa's)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        sentences(), vocab_size=1200, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False
    )
    model = json.loads(trainer.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    tokenizer = BartTokenizer(vocab=model["vocab"], merges=merges)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def marian_checkpoint(path: Path) -> Path:
    """A 2-layer, 32-wide Marian model with a MarianTokenizer: separate German / English sentencepiece models
    trained here and one shared vocabulary, as in Helsinki-NLP/opus-mt-de-en."""
    import sentencepiece
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = {"</s>": 0, "<unk>": 1}
    for side, language in (("source", "de"), ("target", "en")):
        text = path / f"{language}.txt"
        text.write_text(
            "\n".join((MULTI30K / f"train.{language}").read_text(encoding="utf-8").splitlines()[:3000]),
            encoding="utf-8",
        )
        sentencepiece.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(path / side), vocab_size=800, minloglevel=2
        )
        (path / f"{side}.model").rename(path / f"{side}.spm")
        text.unlink()
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path / f"{side}.spm"))
        for piece in (processor.id_to_piece(i) for i in range(processor.get_piece_size())):
            if piece not in ("<unk>", "<s>", "</s>"):
                vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(
        str(path / "source.spm"), str(path / "target.spm"), str(path / "vocab.json"), source_lang="de", target_lang="en"
    )
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=vocab["<pad>"],
        eos_token_id=0,
        decoder_start_token_id=vocab["<pad>"],
        forced_eos_token_id=0,
    )
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    for side in ("source", "target"):
        (path / f"{side}.vocab").unlink(missing_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return t5_checkpoint(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    return bart_checkpoint(tmp_path_factory.mktemp("tiny-bart"))


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory) -> Path:
    return marian_checkpoint(tmp_path_factory.mktemp("tiny-marian"))


def parallel(split: str, samples: int) -> str:
    """A Multi30k split as a `data.SPLIT` override value: line-aligned German and English files."""
    return (
        f"{{parallel: {{de: {MULTI30K / (split + '.de')}, en: {MULTI30K / (split + '.en')}}}, max_samples: {samples}}}"
    )


def run_args(settings: list[str]) -> list[str]:
    return [arg for item in settings for arg in ("--set", item)]


def translation_settings(model: Path, run: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.train={parallel('train', 64)}",
        f"data.validation={parallel('val', 16)}",
        f"data.test={parallel('test_2016_flickr', 16)}",
        "training.epochs=4",
        "training.batch_size=8",
        "training.learning_rate=3e-3",
        "training.log_every_n_steps=2",
        "task.num_beams=2",
        "task.max_new_tokens=12",
        "task.no_repeat_ngram_size=2",
        f"output_dir={run}",
        *extra,
    ]


def summarization_settings(model: Path, run: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.train={{path: {SCITLDR / 'train.jsonl'}, max_samples: 48}}",
        f"data.validation={{path: {SCITLDR / 'dev.jsonl'}, max_samples: 8}}",
        f"data.test={{path: {SCITLDR / 'test.jsonl'}, max_samples: 8}}",
        "training.epochs=5",
        "training.batch_size=8",
        "training.learning_rate=5e-3",
        "training.max_length=96",
        "training.log_every_n_steps=2",
        "task.max_target_length=32",
        "task.num_beams=2",
        "task.max_new_tokens=12",
        f"output_dir={run}",
        *extra,
    ]


def training_losses(run: Path) -> list[float]:
    return [
        entry["loss"]
        for entry in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
        if "split" not in entry
    ]


def read_predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def assert_reloads_with_identical_generations(run: Path, texts: list[str], prefix: str = "") -> None:
    """The saved run loads with plain transformers and generates exactly what llmtune's predict generates."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from llmtune import predict

    predicted = [row["predicted"] for row in predict(run, texts)]
    recipe = load_recipe(run / "recipe.yaml")
    model = AutoModelForSeq2SeqLM.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    plain = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding, a different batch layout than predict's
            encoded = tokenizer(
                [prefix + text], return_tensors="pt", truncation=True, max_length=recipe.training.max_length
            )
            ids = model.generate(
                **encoded,
                num_beams=recipe.task.num_beams,
                max_new_tokens=recipe.task.max_new_tokens,
                do_sample=False,
                length_penalty=recipe.task.length_penalty,
                no_repeat_ngram_size=recipe.task.no_repeat_ngram_size,
            )
            plain.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    assert predicted == plain
    assert any(predicted), "every generation is empty"


# Sentences the tiny models were trained on: a few training steps make their generations non-trivial there.
GERMAN = (MULTI30K / "train.de").read_text(encoding="utf-8").splitlines()[:3]


# BART's targets start with <s>: its tiny model needs more steps before it generates past <s> </s>.
@pytest.mark.parametrize("architecture, epochs", [("marian", 4), ("t5", 4), ("bart", 12)])
def test_translation_trains_evaluates_and_reloads(architecture, epochs, cli, tmp_path, request):
    model = request.getfixturevalue(f"tiny_{architecture}")
    run = tmp_path / "run"
    prefix = "translate German to English: " if architecture == "t5" else ""
    args = run_args(
        translation_settings(
            model,
            run,
            f"task.prefix={prefix!r}" if prefix else "task.prefix=''",
            f"training.epochs={epochs}",
            f"evaluation.every_n_steps={epochs * 8}",
        )
    )
    code, out, err = cli("train", RECIPES / "translation.yaml", *args)
    assert code == 0, err
    losses = training_losses(run)
    assert losses[-1] < losses[0] * 0.9, losses
    test_line = next(line for line in out.splitlines() if line.startswith("test: "))
    assert (
        "bleu=" in test_line and "chrf=" in test_line and "cross_entropy=" in test_line and "perplexity=" in test_line
    )
    assert "signature=BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in test_line
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["cross_entropy"]))
    predictions = read_predictions(run)
    assert len(predictions) == 16
    assert set(predictions[0]) == {"index", "inputs", "reference", "predicted", "score", "metrics"}
    assert set(predictions[0]["metrics"]) == {"bleu"} and 0 < predictions[0]["score"] <= 1
    assert (
        predictions[0]["inputs"]["de"] == (MULTI30K / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[0]
    )
    assert_reloads_with_identical_generations(run, GERMAN, prefix)


def test_summarization_recipe_trains_evaluates_and_predicts_with_t5(cli, tiny_t5, tmp_path):
    """SciTLDR: a list of sentences as the source, several references per dev/test example."""
    run = tmp_path / "run"
    args = run_args(summarization_settings(tiny_t5, run))
    code, out, err = cli("validate", RECIPES / "summarization.yaml", *args)
    assert code == 0, err
    code, out, err = cli("train", RECIPES / "summarization.yaml", *args)
    assert code == 0, err
    losses = training_losses(run)
    assert losses[-1] < losses[0] * 0.9, losses
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {
        "num_examples",
        "runtime_s",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "cross_entropy",
        "perplexity",
        "distinct_outputs",
        "num_target_tokens",
    }
    predictions = read_predictions(run)
    dev_rows = [json.loads(line) for line in (SCITLDR / "test.jsonl").read_text().splitlines()[:8]]
    assert [p["reference"] for p in predictions] == [
        row["target"] if len(row["target"]) > 1 else row["target"][0] for row in dev_rows
    ]
    assert predictions[0]["inputs"]["source"] == " ".join(part.strip() for part in dev_rows[0]["source"])
    # The corpus ROUGE is the mean of the best-reference scores the prediction rows show.
    from llmtune.metrics.generation import rouge

    expected = rouge([p["predicted"] for p in predictions], [row["target"] for row in dev_rows])
    assert metrics["test"]["rougeL"] == pytest.approx(expected["rougeL"], abs=1e-6)
    assert metrics["test"]["rougeL"] == pytest.approx(sum(p["metrics"]["rougeL"] for p in predictions) / 8, abs=1e-3)
    code, out, err = cli("eval", run, "--split", "test")
    assert code == 0, err
    assert f"rouge1={metrics['test']['rouge1']:.4f}" in out
    code, out, err = cli("predict", run, "--text", "We propose a new method for training neural networks. It is fast.")
    assert code == 0, err
    row = json.loads(out)
    assert set(row) == {"index", "inputs", "predicted", "score"} and set(row["inputs"]) == {"source"}
    assert_reloads_with_identical_generations(
        run, ["We propose a new method for training neural networks. It is fast."], "summarize: "
    )


def test_bert2bert_warm_start_trains_and_reloads_with_plain_transformers(cli, tiny_bert, tmp_path):
    """model.decoder: an EncoderDecoderModel from two BERT checkpoints
    (here the tiny BERT with MiniLM's uncased tokenizer)."""
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    run = tmp_path / "run"
    args = run_args(
        translation_settings(
            tiny_bert, run, f"model.decoder={tiny_bert}", "training.epochs=6", "evaluation.every_n_steps=48"
        )
    )
    code, out, err = cli("train", RECIPES / "translation.yaml", *args)
    assert code == 0, err
    assert f"decoder warm-started from {tiny_bert} (local directory)" in out
    losses = training_losses(run)
    assert losses[-1] < losses[0] * 0.9, losses
    model = AutoModelForSeq2SeqLM.from_pretrained(run)
    assert isinstance(model, EncoderDecoderModel)
    assert (
        model.config.decoder_start_token_id == 101
        and model.config.eos_token_id == 102
        and model.config.pad_token_id == 0
    )  # [CLS], [SEP], [PAD]
    assert model.decoder.config.is_decoder and model.decoder.config.add_cross_attention
    assert_reloads_with_identical_generations(run, GERMAN)


def test_lora_uses_the_architectures_default_targets_and_reloads(cli, tiny_t5, tmp_path):
    from peft import PeftConfig

    run = tmp_path / "run"
    args = run_args(translation_settings(tiny_t5, run, "method.type=lora", "method.r=4", "training.learning_rate=1e-2"))
    code, out, err = cli("train", RECIPES / "translation.yaml", *args)
    assert code == 0, err
    assert sorted(PeftConfig.from_pretrained(run).target_modules) == ["q", "v"]  # T5's attention query / value
    losses = training_losses(run)
    assert losses[-1] < losses[0], losses
    code, out, err = cli("predict", run, "--text", GERMAN[0])
    assert code == 0, err
    row = json.loads(out)
    assert set(row) == {"index", "inputs", "predicted", "score"} and row["inputs"] == {"de": GERMAN[0]}


@pytest.fixture()
def translation_rows(tmp_path):
    def write(rows: list[dict], name: str = "pairs.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


PAIR = {"translation": {"de": "Ein Hund läuft.", "en": "A dog runs."}}


@pytest.mark.parametrize(
    "rows, sets, expected",
    [
        (
            [PAIR, {"translation": {"de": "Zwei Katzen.", "en": "  "}}],
            [],
            "line 2: empty target in column 'translation[en]'",
        ),
        (
            [PAIR] * 2,
            ["task.target_lang=fr"],
            "unknown language code 'fr' (task.target_lang): column 'translation' holds de, en",
        ),
        (
            [{"text": "Ein Hund.", "label": "A dog."}] * 2,
            [],
            "no column 'de' (task.source_lang) and no nested column 'translation'",
        ),
        (
            [{"de": "Ein Hund.", "english": "A dog."}] * 2,
            ["task.target_column=en"],
            "column 'en' (task.target_column) not found",
        ),
        ([PAIR] * 2, ["task.source_lang=deutsch!"], "task.source_lang: 'deutsch!' is not a language code"),
        ([PAIR] * 2, ["task.num_beams=0"], "task.num_beams: Input should be greater than or equal to 1"),
        ([PAIR] * 2, ["task.max_new_tokens=100000"], "task.max_new_tokens: Input should be less than or equal to 4096"),
        (
            [PAIR] * 2,
            ["task.no_repeat_ngram_size=-1"],
            "task.no_repeat_ngram_size: Input should be greater than or equal to 0",
        ),
        (
            [PAIR] * 2,
            ["method.type=lora", "model.decoder=MODEL"],
            "model.decoder: a warm-started encoder-decoder has new cross-attention layers",
        ),
    ],
)
def test_bad_translation_input_stops_with_one_line(rows, sets, expected, cli, tiny_marian, translation_rows, tmp_path):
    data = translation_rows(rows)
    sets = [item.replace("MODEL", str(tiny_marian)) for item in sets]
    args = run_args(
        [
            f"model.name={tiny_marian}",
            f"data.train={data}",
            "data.validation=null",
            "data.test=null",
            f"output_dir={tmp_path / 'run'}",
            *sets,
        ]
    )
    code, out, err = cli("train", RECIPES / "translation.yaml", *args)
    assert code == 2, err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_empty_summary_and_missing_document_column(cli, tiny_t5, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text(
        json.dumps({"source": ["One.", "Two."], "target": ["A summary."]})
        + "\n"
        + json.dumps({"source": ["Three."], "target": []})
        + "\n"
    )
    base = [
        f"model.name={tiny_t5}",
        f"data.train={data}",
        "data.validation=null",
        "data.test=null",
        f"output_dir={tmp_path / 'run'}",
    ]
    code, out, err = cli("train", RECIPES / "summarization.yaml", *run_args(base))
    assert (
        code == 2
        and "line 2: empty target in column 'target'" in err
        and "data.drop_empty: true leaves such rows out" in err
    ), err
    code, out, err = cli("train", RECIPES / "summarization.yaml", *run_args([*base, "task.source_column=document"]))
    assert code == 2 and "column 'document' (task.source_column) not found" in err, err
    assert not (tmp_path / "run").exists()


def test_drop_empty_leaves_out_rows_with_an_empty_source_or_target_and_counts_them(tmp_path):
    import datasets

    from llmtune.common.errors import DataWarning
    from llmtune.data.schema import DataSpec
    from llmtune.tasks.seq2seq import Summarization, SummarizationOptions

    rows = [
        {"source": "One.", "target": "A."},
        {"source": "", "target": "B."},
        {"source": "Three.", "target": ["", " "]},
        {"source": "Four.", "target": "D."},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = Summarization(SummarizationOptions(type="summarization", source_column="source", target_column="target"))
    spec = DataSpec(train={"path": str(path)}, drop_empty=True)
    splits = {
        "train": datasets.Dataset.from_list(
            [{**row, "target": row["target"] if isinstance(row["target"], list) else [row["target"]]} for row in rows]
        )
    }
    with pytest.warns(
        DataWarning,
        match=(
            rf"^data.train \({path}\): left out 2 of 4 rows with an empty source or target "
            r"\(line 2, line 3; data.drop_empty\)"
        ),
    ):
        task.prepare(splits, spec)
    assert splits["train"]["source"] == ["One.", "Four."]
    splits = {"train": datasets.Dataset.from_list([{"source": " ", "target": ["A."]}])}
    with pytest.raises(
        UserError, match="every row has an empty source or target; nothing is left after data.drop_empty"
    ):
        task.prepare(splits, spec)


def test_long_targets_are_truncated_with_one_counted_warning(tiny_marian, translation_rows):
    import datasets

    from llmtune.common.errors import DataWarning
    from llmtune.models.loading import load_tokenizer
    from llmtune.models.sources import Checkpoint
    from llmtune.tasks.seq2seq import Translation, TranslationOptions

    task = Translation(TranslationOptions(type="translation", source_lang="de", target_lang="en", max_target_length=8))
    long = "A man in a blue shirt is standing on a ladder cleaning windows of a tall building."
    rows = [
        {"de": "Ein Hund.", "en": "A dog."},
        {"de": "Ein Mann putzt Fenster.", "en": long},
        {"de": "Ein Mann.", "en": long},
    ]
    tokenizer = load_tokenizer(Checkpoint("tiny", str(tiny_marian), "local directory"))
    with pytest.warns(
        DataWarning, match=r"^2 of 3 targets are longer than task.max_target_length \(8 tokens\) and were truncated"
    ) as caught:
        features = task.preprocess(datasets.Dataset.from_list(rows), tokenizer, 64)
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == 1
    assert [len(labels) for labels in features["labels"]][1:] == [8, 8]
    assert features["labels"][1][-1] == tokenizer.eos_token_id  # truncated, still ended
    assert features["labels"][0] == tokenizer(text_target="A dog.")["input_ids"]


def test_parallel_files_must_be_line_aligned(tmp_path):
    from llmtune.data.reading import read_parallel

    (tmp_path / "a.de").write_text("Eins\nZwei\n")
    (tmp_path / "a.en").write_text("One\nTwo\nThree\n")
    with pytest.raises(UserError, match=r"same number of lines .* a.de: 2, a.en: 3"):
        read_parallel({"de": str(tmp_path / "a.de"), "en": str(tmp_path / "a.en")}, "data.train")
    (tmp_path / "a.en").write_text("One\nTwo")  # no newline after the last line
    assert read_parallel({"de": str(tmp_path / "a.de"), "en": str(tmp_path / "a.en")}, "data.train").to_list() == [
        {"de": "Eins", "en": "One"},
        {"de": "Zwei", "en": "Two"},
    ]


def test_parallel_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "recipe.yaml").write_text(
        "model: {name: m}\ntask: {type: translation, source_lang: de, target_lang: en}\n"
        "data: {train: {parallel: {de: data/train.de, en: data/train.en}}}\n"
    )
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert recipe.data.train.parallel == {
        "de": str(tmp_path / "data" / "train.de"),
        "en": str(tmp_path / "data" / "train.en"),
    }


def test_builtin_recipes_validate_as_shipped():
    summarization = load_recipe(RECIPES / "summarization.yaml")
    assert summarization.model.name == "google-t5/t5-small" and summarization.task.prefix == "summarize: "
    assert summarization.data.train.hub == "allenai/scitldr"
    translation = load_recipe(RECIPES / "translation.yaml")
    assert translation.model.name == "Helsinki-NLP/opus-mt-de-en"
    assert (translation.task.source_lang, translation.task.target_lang) == ("de", "en")


def test_translation_scores_several_references_as_sacrebleu_streams():
    import sacrebleu

    from llmtune.tasks.seq2seq import Translation, TranslationOptions

    task = Translation(TranslationOptions(type="translation", source_lang="de", target_lang="en"))
    generated = ["A man rides a bike.", "Two dogs play in the snow.", "A woman sits."]
    references = [
        ["A man is riding a bicycle.", "A man rides a bike down the road."],
        ["Two dogs are playing in snow."],
        ["A woman is sitting on a bench.", "A lady sits.", "Someone sits on a bench."],
    ]
    corpus, per_example = task.score(generated, references, ("bleu", "chrf", "cross_entropy"))
    streams = [[golds[k] if k < len(golds) else None for golds in references] for k in range(3)]
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(generated, streams).score, abs=1e-6)
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(generated, streams).score, abs=1e-6)
    assert "nrefs:var" in corpus["signature"]
    assert per_example[0]["bleu"] == pytest.approx(sacrebleu.sentence_bleu(generated[0], references[0]).score, abs=1e-4)
