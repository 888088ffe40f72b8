"""QLoRA (a base loaded in 4 or 8 bits by bitsandbytes) and the 8-bit optimizer: they train, save plain adapters
and weights that load without bitsandbytes, and refuse clearly where they cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file

from llmtune import load_recipe, predict, train

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def llama_64(tmp_path_factory):
    """A 2-layer Llama 64 wide: bitsandbytes' 4-bit CPU kernels need rows of at least one 64-value block."""
    from conftest import gpt2_style_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llama-64")
    tokenizer = gpt2_style_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def run(recipe_path, *overrides, resume=False):
    return train(load_recipe(recipe_path, list(overrides)), echo=lambda *a: None, resume=resume)


def losses(run_dir) -> list[float]:
    entries = map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())
    return [entry["loss"] for entry in entries if "loss" in entry and "split" not in entry]


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantized_base_trains_a_plain_adapter_that_loads_on_the_float_base(
    bits, llama_64, sentiment_files, tmp_path
):
    import bitsandbytes
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe = write_recipe(
        tmp_path / "r.yaml", llama_64, sentiment_files, f"method:\n  type: lora\n  quantization: {bits}\n"
    )
    seen = []
    original = bitsandbytes.nn.Linear4bit.forward if bits == "4bit" else bitsandbytes.nn.Linear8bitLt.forward
    layer = bitsandbytes.nn.Linear4bit if bits == "4bit" else bitsandbytes.nn.Linear8bitLt
    with pytest.MonkeyPatch.context() as patch:  # the base really runs quantized layers
        patch.setattr(layer, "forward", lambda self, *a, **k: seen.append(1) or original(self, *a, **k))
        result = run(recipe, "training.learning_rate=3e-3", "training.epochs=3", "training.log_every_n_steps=1")
    assert seen
    history = losses(result.run_dir)
    assert history[-1] < history[0]
    files = sorted(path.name for path in result.run_dir.iterdir())
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    adapter = load_file(result.run_dir / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in adapter.values()} == {torch.float32}
    assert any("score" in name for name in adapter)  # the new head, trained in float

    tokenizer = AutoTokenizer.from_pretrained(result.run_dir)
    base = AutoModelForSequenceClassification.from_pretrained(
        llama_64, num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    model = PeftModel.from_pretrained(base, result.run_dir).eval()
    texts = ["a wonderful, moving film", "a waste of money"]
    with torch.inference_mode():
        plain = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    ours = predict(result.run_dir, texts)
    for row, probabilities in zip(ours, plain):
        assert [row["probabilities"][name] for name in ("negative", "positive")] == pytest.approx(
            probabilities.tolist(), abs=1e-5
        )


def test_qlora_merges_into_a_standalone_float_model(cli, llama_64, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe = write_recipe(
        tmp_path / "r.yaml", llama_64, sentiment_files, "method:\n  type: lora\n  quantization: 4bit\n"
    )
    code, _, err = cli("train", recipe, "--set", "training.gradient_checkpointing=true")
    assert code == 0, err
    code, _, err = cli("merge", tmp_path / "run", "--output", tmp_path / "merged")
    assert code == 0, err
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    ours = predict(tmp_path / "run", ["I loved every minute"])[0]["probabilities"]
    theirs = predict(tmp_path / "merged", ["I loved every minute"])[0]["probabilities"]
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_adamw_8bit_keeps_8_bit_moments_and_resumes_exactly(tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    common = ("training.optimizer=adamw_8bit", "training.scheduler=constant", "checkpointing.every_n_steps=2",
              "training.log_every_n_steps=1", "data.validation=null", "data.test=null",
              "training.batch_size=4")  # fmt: skip
    whole = run(recipe, *common, "training.max_steps=4", f"output_dir={tmp_path / 'whole'}").run_dir
    part = run(recipe, *common, "training.max_steps=2", f"output_dir={tmp_path / 'part'}").run_dir
    state = torch.load(part / "checkpoints" / "step-2" / "optimizer.pt", weights_only=False)["state"]
    quantized = [moments["__bnb_optimizer_quant_state__"] for moments in state.values()]  # how bitsandbytes saves
    assert any(
        value.dtype == torch.uint8 for moments in quantized for value in moments.values() if hasattr(value, "dtype")
    )
    resumed = run(recipe, *common, "training.max_steps=4", f"output_dir={part}", resume=True).run_dir
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-6)
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_without_bitsandbytes_quantization_is_one_line(cli, tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )
    lora = "method:\n  type: lora\n  quantization: 4bit\n"
    quantized = write_recipe(tmp_path / "q.yaml", tiny_bert, sentiment_files, lora)
    plain = write_recipe(tmp_path / "r.yaml", tiny_bert, sentiment_files)
    for recipe, extra in ((quantized, ()), (plain, ("--set", "training.optimizer=adamw_8bit"))):
        code, out, err = cli("train", recipe, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "needs bitsandbytes, which is not installed: pip install 'llmtune[qlora]'" in err
        assert not (tmp_path / "run").exists()


def test_quantizing_a_gguf_checkpoint_or_a_full_fine_tuning_is_refused(cli, tiny_bert, sentiment_files, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_bert, sentiment_files, "method:\n  type: lora\n  quantization: 4bit\n"
    )
    code, _, err = cli("validate", recipe, "--set", "model.gguf_file=model.gguf")
    assert code == 2 and "cannot be quantized again by bitsandbytes" in err
    code, _, err = cli("validate", recipe, "--set", "method.type=full")
    assert code == 2 and "method.quantization" in err
