"""Keep library chatter (load reports, download and map progress bars) away from notebook and script users."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from typing import Callable


def silence_libraries() -> Callable[[], None]:
    """Silence transformers / datasets logging and progress bars; returns a function that restores them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    verbosity = transformers.logging.get_verbosity()
    datasets_verbosity = datasets.logging.get_verbosity()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()
    datasets_bars = datasets.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    # Not even errors: dataset builders log a parse error just before raising it, and llmtune reports it itself.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    # bitsandbytes, when installed, is imported by peft and transformers and warns on import that an optional
    # faster CPU kernel package is missing: nothing to do with the run.
    bitsandbytes = logging.getLogger("bitsandbytes")
    bitsandbytes_level = bitsandbytes.level
    bitsandbytes.setLevel(logging.ERROR)
    restore_deepspeed_check = import_deepspeed_only_for_its_engine()

    def restore() -> None:
        restore_deepspeed_check()
        transformers.logging.set_verbosity(verbosity)
        bitsandbytes.setLevel(bitsandbytes_level)
        datasets.logging.set_verbosity(datasets_verbosity)
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()

    return restore


def silence_libraries_when_loaded() -> None:
    """Silence transformers / datasets for the rest of the process as soon as either is imported (at once if one
    is): a command answers bad input before it imports them, and stays fast doing so."""
    if "transformers" in sys.modules or "datasets" in sys.modules:
        silence_libraries()
    elif not any(isinstance(finder, _SilenceOnLoad) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SilenceOnLoad())


class _SilenceOnLoad(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it lets the usual finder load transformers or datasets, then silences both."""

    def find_spec(self, name, path=None, target=None):
        if name not in ("transformers", "datasets"):
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            silence_libraries()

        spec.loader.exec_module = exec_module
        return spec


def import_deepspeed_only_for_its_engine() -> Callable[[], None]:
    """Keep DeepSpeed unimported in runs that do not use its engine; returns a function that undoes it.

    Accelerate's unwrap_model imports DeepSpeed, whenever it is installed, only to ask whether the model is a
    DeepSpeed engine: seconds of imports, and on a CPU DeepSpeed's "Setting accelerator to CPU" warning in every
    plain run. No model is the engine of a DeepSpeed that was never imported (a DeepSpeed run imports it when
    Accelerate prepares the engine), so whether it was imported answers the question exactly.
    """
    try:
        from accelerate.utils import other
    except ImportError:  # (accelerate is a dependency; nothing to keep unimported without it)
        return lambda: None
    original = other.is_deepspeed_available
    if getattr(original, "llmtune_wrapped", False):
        return lambda: None

    def imported_and_available() -> bool:
        return "deepspeed" in sys.modules and original()

    imported_and_available.llmtune_wrapped = True
    other.is_deepspeed_available = imported_and_available

    def restore() -> None:
        other.is_deepspeed_available = original

    return restore


def quiet_libraries(function):
    """Run `function` with transformers / datasets logging and progress bars silenced, then restore them."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        restore = silence_libraries()
        try:
            return function(*args, **kwargs)
        finally:
            restore()

    return wrapper


@contextlib.contextmanager
def peft_deprecations_silenced():
    """peft reads transformers 5's deprecated `is_gradient_checkpointing` on every wrap and load;
    nothing a user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        # ... and enables checkpointing under transformers' old name (prepare_model_for_kbit_training)
        warnings.filterwarnings(
            "ignore", message="`gradient_checkpointing_enable` is deprecated", category=FutureWarning
        )
        yield


@contextlib.contextmanager
def onnx_tracer_warnings_silenced():
    """torch's ONNX exporter traces the model, and the trace warns about transformers' own Python branches on
    tensor values (the padding of the attention mask, SDPA's is_causal) and about its indexing ops: lines about
    library code the user cannot change. The export is checked against the model's own outputs instead
    (tests/test_export.py, logits on inputs of other lengths and batch sizes)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        yield
