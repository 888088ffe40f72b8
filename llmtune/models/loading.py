"""Loading a checkpoint's tokenizer, config and weights with the task's head (GGUF dequantized, an
encoder-decoder warm-started from two checkpoints), and what the loaded model allows (input length, gradient
checkpointing)."""

from __future__ import annotations

import warnings
from pathlib import Path

from safetensors import SafetensorError

from ..common.errors import Notice, UserError
from ..common.lazy import torch, transformers
from .quantization import quantized_loading
from .sources import Checkpoint


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
