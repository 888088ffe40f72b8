"""Metric modules shipped inside llmtune, loaded through `evaluate` from their local paths.

`evaluate.load("accuracy")` fetches code from the Hub and fails offline; loading a module by its
directory does not touch the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

METRICS_DIR = Path(__file__).parent


@lru_cache(maxsize=None)
def load(name: str):
    """An `evaluate` metric module from this package (`accuracy`, `f1`)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))
