"""From a checkpoint's name to a model ready to train or run.

Where its files come from (`sources.py`), loading its tokenizer, config and weights (`loading.py`), quantizing the
frozen base (`quantization.py`), the adapter method (`adapters.py`), the dtypes it trains and saves in
(`precision.py`), an ONNX export (`onnx.py`), and the recipe sections that say all this (`schema.py`). The names
other floors call are importable from here."""

from .adapters import apply_method
from .loading import (
    capped_max_length,
    count_parameters,
    damaged_weights,
    effective_max_length,
    enable_gradient_checkpointing,
    is_decoder_only,
    load_config,
    load_model,
    load_tokenizer,
    materialize_meta,
)
from .onnx import ONNX_OUTPUTS, load_onnx, onnx_file
from .precision import in_stored_dtypes, set_precision
from .quantization import HEAD_MODULES, check_quantization_installed, prepare_quantized
from .sources import (
    OFFLINE_PACKAGES,
    REPO_ID,
    Checkpoint,
    is_hub_id,
    offline_package_path,
    pull_run,
    resolve_checkpoint,
    resolve_decoder,
)

__all__ = [
    "HEAD_MODULES",
    "OFFLINE_PACKAGES",
    "ONNX_OUTPUTS",
    "REPO_ID",
    "Checkpoint",
    "apply_method",
    "capped_max_length",
    "check_quantization_installed",
    "count_parameters",
    "damaged_weights",
    "effective_max_length",
    "enable_gradient_checkpointing",
    "in_stored_dtypes",
    "is_decoder_only",
    "is_hub_id",
    "load_config",
    "load_model",
    "load_onnx",
    "load_tokenizer",
    "materialize_meta",
    "offline_package_path",
    "onnx_file",
    "prepare_quantized",
    "pull_run",
    "resolve_checkpoint",
    "resolve_decoder",
    "set_precision",
]
