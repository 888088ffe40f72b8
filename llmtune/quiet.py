"""Keep library chatter (load reports, download and map progress bars) away from notebook and script users."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
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

    def restore() -> None:
        transformers.logging.set_verbosity(verbosity)
        bitsandbytes.setLevel(bitsandbytes_level)
        datasets.logging.set_verbosity(datasets_verbosity)
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()

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
