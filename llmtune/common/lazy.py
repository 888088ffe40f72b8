"""Heavy libraries, imported when first used.

torch, transformers and datasets take seconds to import. Modules that the recipe schema needs (the
task modules, data, models) take them from here, so `llmtune --help` and the validation of a broken
recipe answer at once, and the libraries load on the first real use: `from ..lazy import torch` reads
like an import and `torch.zeros(...)` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported on its first attribute access."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
datasets = LazyModule("datasets")
transformers = LazyModule("transformers")
