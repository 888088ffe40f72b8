"""`llmtune export`: a run as ONNX for ONNX Runtime. The export gives the logits PyTorch gives, int8 weights cost
little accuracy, eval / predict / serve load the export, and what cannot be exported is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RECIPES, tiny_qa_overrides, write_recipe, write_sentiment_files
from test_bad_input import assert_user_error

from llmtune import evaluate, load_recipe, predict, train


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory):
    """Tiny finished runs: full classification, LoRA classification, QA, NER."""
    from test_token_classification import conll_files, settings

    folder = tmp_path_factory.mktemp("export-runs")
    files = write_sentiment_files(folder, repeat=4)
    made = {}
    for method in ("full", "lora"):
        recipe = write_recipe(folder / f"{method}.yaml", tiny_bert, files, f"method:\n  type: {method}\n")
        made[method] = train(load_recipe(recipe, ["training.learning_rate=1e-3"]), output_dir=folder / method).run_dir
    qa = tiny_qa_overrides(tiny_bert)
    made["qa"] = train(load_recipe(RECIPES / "qa.yaml", qa), output_dir=folder / "qa").run_dir
    ner = settings(tiny_bert, conll_files(folder), folder / "ner", "training.epochs=2")
    made["ner"] = train(load_recipe(RECIPES / "ner.yaml", ner)).run_dir
    return made


def onnx_logits(folder, texts):
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    names = {item.name for item in session.get_inputs()}
    return session.run(None, {k: v.astype(np.int64) for k, v in encoded.items() if k in names})[0]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_onnx_logits_equal_pytorchs_with_plain_onnxruntime(method, runs, tmp_path, cli):
    """The export loads with plain onnxruntime (no llmtune) and gives the run's logits; LoRA is merged first."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = runs[method]
    code, out, err = cli("export", run, "--output", tmp_path / "onnx")
    assert code == 0, err
    texts = ["a wonderful, moving film", "dull", "I loved every minute of it, truly"]
    if method == "full":
        model = AutoModelForSequenceClassification.from_pretrained(run)
    else:
        from llmtune.recipe import load_recipe as read

        base = AutoModelForSequenceClassification.from_pretrained(read(run / "recipe.yaml").model.name, num_labels=2)
        model = PeftModel.from_pretrained(base, run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    with torch.no_grad():
        expected = model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    got = onnx_logits(tmp_path / "onnx", texts)
    assert np.abs(got - expected).max() < 1e-4
    assert set(json.loads((tmp_path / "onnx" / "config.json").read_text())["id2label"].values()) == {
        "negative",
        "positive",
    }


@pytest.mark.parametrize("name", ["full", "qa", "ner"])
def test_eval_and_predict_of_the_export_equal_the_runs(name, runs, tmp_path, cli):
    run = runs[name]
    code, out, err = cli("export", run, "--output", tmp_path / "onnx")
    assert code == 0, err
    ours, exported = evaluate(run, split="test"), evaluate(tmp_path / "onnx", split="test")
    for metric, value in ours[0].items():
        if metric != "runtime_s" and not isinstance(value, dict):
            assert exported[0][metric] == pytest.approx(value, abs=1e-4), metric
    inputs = {
        "full": ["a waste of money"],
        "ner": ["Paul Walker visited Paris ."],
        "qa": [{"question": "Where is it?", "context": "It is under the old oak tree."}],
    }[name]
    assert [row["predicted"] for row in predict(tmp_path / "onnx", inputs)] == [
        row["predicted"] for row in predict(run, inputs)
    ]


def test_int8_export_has_int8_weights_and_serve_runs_it(runs, tmp_path, cli):
    code, out, err = cli("export", runs["full"], "--output", tmp_path / "int8", "--quantize", "int8")
    assert code == 0, err
    import onnx

    # The tiny model is mostly embedding table (kept fp32), so its file size says little: check the graph.
    graph = onnx.load(tmp_path / "int8" / "model_quantized.onnx").graph
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) >= 4
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(t.dims[0] * t.dims[1] for t in int8 if len(t.dims) == 2) > 0
    from test_serve import Server

    server = Server(tmp_path / "int8", "--backend", "onnx")
    try:
        import httpx

        row = httpx.post(server.url + "/v1/predict", json={"inputs": "a wonderful film"}).json()["predictions"][0]
    finally:
        server.stop()
    assert row["predicted"] in ("negative", "positive")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--quantize", "int4"], "--quantize int4: unknown; expected one of int8"),
        (["--format", "tflite"], "--format tflite: unknown; expected onnx"),
    ],
)
def test_bad_export_arguments_are_one_line(args, error, runs, tmp_path, cli):
    assert_user_error(cli("export", runs["full"], "--output", tmp_path / "x", *args), error)
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_export_and_never_a_training_run(runs, tmp_path, cli):
    """`export RUN -o OTHER_RUN --overwrite` once deleted OTHER_RUN's adapter, checkpoints and log."""
    import shutil

    other = shutil.copytree(runs["lora"], tmp_path / "other-run")
    before = {p.name: p.stat().st_mtime_ns for p in other.iterdir()}
    assert_user_error(
        cli("export", runs["full"], "--output", other, "--overwrite"),
        f"--output: {other} holds a training run (llmtune train), not an ONNX export",
    )
    assert {p.name: p.stat().st_mtime_ns for p in other.iterdir()} == before
    exported = tmp_path / "onnx"
    assert cli("export", runs["full"], "--output", exported)[0] == 0
    assert_user_error(
        cli("export", runs["full"], "--output", exported), "already holds an ONNX export; pass --overwrite"
    )
    code, out, err = cli("export", runs["full"], "--output", exported, "--overwrite", "--quantize", "int8")
    assert code == 0, err
    assert (exported / "model_quantized.onnx").is_file()


def test_an_export_shows_no_tracer_warnings(runs, tmp_path, cli):
    """torch's tracer warned six lines about transformers' code on every export."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = cli("export", runs["lora"], "--output", tmp_path / "onnx")
    assert code == 0, err
    shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]  # Python shows users no others
    assert [f"{w.category.__name__}: {w.message}" for w in shown] == []


def test_a_model_that_generates_text_is_refused_in_one_line(tiny_llama, tmp_path, cli):
    from test_generative_seq2seq import translation_settings

    settings = translation_settings(tiny_llama, tmp_path / "run", "training.max_steps=1")
    run = train(load_recipe(RECIPES / "translation-gpt.yaml", settings)).run_dir
    assert_user_error(
        cli("export", run, "--output", tmp_path / "onnx"),
        "a translation run generates text, which llmtune does not export",
    )
    assert not (tmp_path / "onnx").exists()


@pytest.mark.slow
def test_minilm_sst2_export_keeps_its_accuracy(sst2, tmp_path, cli):
    """MiniLM fine-tuned on 2,000 SST-2 sentences: the fp32 export gives PyTorch's logits (within 1e-4) and the same
    label on every dev sentence; int8 weights lose at most one point of dev accuracy."""
    from test_learning import sst2_overrides

    recipe = load_recipe(
        RECIPES / "sentiment.yaml", sst2_overrides(sst2, "data.train.max_samples=2000", "training.epochs=1")
    )
    run = train(recipe, output_dir=tmp_path / "run").run_dir
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        code, out, err = cli("export", run, "--output", tmp_path / name, *extra)
        assert code == 0, err
    torch_metrics, torch_rows = evaluate(run, split="validation")
    fp32_metrics, fp32_rows = evaluate(tmp_path / "fp32", split="validation")
    int8_metrics, _ = evaluate(tmp_path / "int8", split="validation")
    assert [r["predicted"] for r in fp32_rows] == [r["predicted"] for r in torch_rows]
    assert (
        max(
            abs(a - b)
            for r, s in zip(fp32_rows, torch_rows)
            for a, b in zip(r["probabilities"].values(), s["probabilities"].values())
        )
        < 1e-4
    )
    assert int8_metrics["accuracy"] >= torch_metrics["accuracy"] - 0.01, (torch_metrics, int8_metrics)
