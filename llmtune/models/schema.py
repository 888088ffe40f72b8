"""The recipe's `model` and `method` sections: the checkpoint to start from, and how its weights are trained
(full fine-tuning or a peft adapter, optionally on a quantized base)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from ..common.section import Section


class ModelSpec(Section):
    """The pretrained checkpoint to start from."""

    name: str = Field(
        description="Hub id (`org/name`) or a local directory holding a Hugging Face checkpoint, or a local .gguf file."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit; default: the main branch.")
    gguf_file: str | None = Field(
        None,
        description="Load this GGUF file (config, tokenizer and weights in one file; "
        "dequantized to float32 for training): a file name in the model.name directory or hub repository, "
        "or an absolute path. The run saves ordinary safetensors.",
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust its author."
    )
    decoder: str | None = Field(
        None,
        description="Summarization / translation: warm-start an encoder-decoder (BERT2BERT) from two checkpoints: "
        "`name` is the encoder, this hub id or directory the decoder (cross-attention is new). "
        "Null: `name` is already an encoder-decoder checkpoint.",
    )


class FullMethod(Section):
    """Full fine-tuning: every weight is trained."""

    type: Literal["full"] = Field(description="full | lora | ia3 | prefix_tuning")
    reinit_top_layers: int = Field(
        0,
        ge=0,
        le=1000,
        description="Re-initialise the top N transformer layers (and the pooler) before training instead of "
        "starting them from the checkpoint: steadier fine-tuning on small data sets for BERT-style models "
        "(Zhang et al. 2021); 0 keeps every pretrained layer.",
    )


Quantization = Literal["4bit", "8bit"] | None


def quantization_field():
    """Every adapter method's `quantization`: the frozen base may be loaded quantized (QLoRA)."""
    return Field(
        None,
        description="Load the frozen base model quantized through bitsandbytes: 4bit (QLoRA: NF4, double "
        "quantization, bf16 compute) or 8bit; the new task head stays in float. About a quarter (4bit) or half (8bit) "
        "of the weight memory; the run still saves a plain adapter. Needs bitsandbytes (`pip install "
        "'llmtune[qlora]'`).",
    )


class LoraMethod(Section):
    """LoRA: low-rank adapters on chosen linear layers; the new task head is trained and saved with them."""

    type: Literal["lora"] = Field(description="full | lora | ia3 | prefix_tuning")
    r: int = Field(8, ge=1, description="Rank of the adapter matrices.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: the architecture's attention projections."
    )
    use_dora: bool = Field(
        False,
        description="DoRA: split each adapted weight into magnitude and direction and train both (closer to full "
        "fine-tuning at the same rank; slower steps).",
    )
    use_rslora: bool = Field(
        False, description="rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r (steadier at high ranks)."
    )
    quantization: Quantization = quantization_field()


class IA3Method(Section):
    """IA3: learned rescaling vectors on keys, values and feed-forward activations."""

    type: Literal["ia3"] = Field(description="full | lora | ia3 | prefix_tuning")
    target_modules: list[str] | None = Field(None, description="Module names to rescale; default: per architecture.")
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward layers; default: per architecture."
    )
    quantization: Quantization = quantization_field()


class PrefixTuningMethod(Section):
    """Prefix tuning: trained key/value prefixes in every attention layer."""

    type: Literal["prefix_tuning"] = Field(description="full | lora | ia3 | prefix_tuning")
    num_virtual_tokens: int = Field(20, ge=1, description="Length of the trained prefix.")
    quantization: Quantization = quantization_field()


Method = Annotated[Union[FullMethod, LoraMethod, IA3Method, PrefixTuningMethod], Field(discriminator="type")]
