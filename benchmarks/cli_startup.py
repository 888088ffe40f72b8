"""How fast the CLI answers when nothing heavy is needed: `--help`, `recipes`, and a broken recipe's one-line error.

Each command runs as a fresh process, the commands interleaved (A B C D A B C D ...) so that machine noise falls on
all of them alike; the table gives the median and the range of the wall times.

Usage: python benchmarks/cli_startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as folder:
        broken = Path(folder) / "broken.yaml"
        broken.write_text("model:\n  name: x\n task:\n  type: classification\n")  # bad indentation
        unknown_key = Path(folder) / "typo.yaml"
        unknown_key.write_text((ROOT / "recipes" / "sentiment.yaml").read_text() + "trainig: {epochs: 1}\n")
        commands = {
            "llmtune --help": ["--help"],
            "llmtune recipes": ["recipes"],
            "llmtune validate (YAML error)": ["validate", str(broken)],
            "llmtune train (unknown key)": ["train", str(unknown_key)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, args in commands.items():
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "llmtune", *args], cwd=ROOT, capture_output=True, check=False)
                times[name].append(time.perf_counter() - started)
    print("| command | median (s) | min (s) | max (s) | runs |\n|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} | {len(values)} |")


if __name__ == "__main__":
    main()
