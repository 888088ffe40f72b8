"""Peak training memory and step time, predicted from a recipe before any weights load (`llmtune estimate`).

The model is built on the meta device from its config (shapes, no storage) and the recipe's method is applied to
it, so parameter counts, trainable counts and layer shapes are exact. The bytes follow from them:

- weights: trained parameters in float32 (master weights, also under bf16/fp16 mixed precision; 16-bit with
  `bf16-pure`); the frozen base of an adapter method in the compute dtype (float32 on CPU), or quantized:
  NF4 with double quantization is 0.5 byte per linear weight plus 0.127 bit of block scales, LLM.int8 1 byte;
  peft's k-bit preparation turns the remaining (norm, embedding) weights to float32.
- autocast copies: mixed precision casts each trained matmul weight to 16 bits once per forward pass and keeps
  the copy for the backward pass (2 bytes per trained non-embedding parameter).
- gradients: one per trained parameter, in its dtype.
- optimizer: AdamW keeps two moments per trained parameter (8 bytes in float32); bitsandbytes' 8-bit AdamW 2.
- activations: what autograd saves per layer for the batch shape (batch x longest sequence), counted tensor by
  tensor as Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") count
  s*b*h*(34 + 5*a*s/h) bytes for a 16-bit GPT layer, generalised to the layer's real widths (grouped KV heads, a
  gated MLP), its dtype, its dropouts, and whether attention keeps the s x s probabilities (eager attention, or
  torch's math kernel, which CPU uses when attention dropout is on) or not (fused kernels). With gradient
  checkpointing only each layer's input is kept, plus one layer's activations while it is recomputed.
- logits: the output layer's scores (a vocabulary's worth per scored token for language models: a causal LM's
  completion tokens only, as llmtune's prompt -> completion loss computes them), the float32 log-softmax
  cross-entropy keeps, and their gradient.

Peak = weights + autocast copies + optimizer + the larger of (activations + logits) and gradients: the backward pass
frees activations layer by layer as it fills the gradients, and `zero_grad` frees the gradients before the next
forward pass, so the two are never all held at once. The process's own memory (libraries, tokenizer, data) comes on
top. Step time is the model FLOPs of `llmtune.speed` for one batch over a measured matmul peak and an assumed model
FLOPs utilization: a rough figure, good for an order of magnitude.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .. import models
from ..common.errors import UserError
from ..inference.devices import precision_label
from . import speed
from .preparation import Prepared

# Assumed model FLOPs utilization for the step-time figure. On CPU, llmtune's measured runs of MiniLM and tiny
# models (docs/benchmarks.md) reach 10-30% of the matmul probe's peak, the small layers and the optimizer being
# far from a big square matmul; on a GPU, Hugging Face-style training of 0.1-1B models at short lengths typically
# reaches 25-45% of the bf16 peak. The midpoints are used.
ASSUMED_MFU = {"cpu": 0.2, "cuda": 0.35}
NF4_BYTES = 0.5 + 0.127 / 8  # 4 bits + double-quantized block scales (8-bit per 64, float32 per 256 blocks)
INT8_BYTES = 1.0
# Per-token output width of each model class the tasks load; None: a vocabulary's worth.
PER_TOKEN_OUTPUTS = {
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
}


@dataclass
class Estimate:
    """Bytes per component, the peak, the batch shape and the step-time figure of one recipe's training."""

    components: dict[str, float]
    peak_bytes: float
    batch_size: int
    sequence_length: int
    trainable_parameters: int
    total_parameters: int
    precision: str
    notes: list[str] = field(default_factory=list)
    step_flops: float = 0.0
    peak_flops: float = 0.0
    assumed_mfu: float = 0.0
    step_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Shape:
    """The transformer layer widths the activation count needs."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_width: int  # width of the key (and value) projection: heads x head size, fewer with grouped KV heads
    vocab: int
    gated_mlp: bool
    hidden_dropout: float
    attention_dropout: float


def meta_model(prepared: Prepared):
    """The task's model with the recipe's method applied, built on the meta device: exact shapes, no storage."""
    import transformers

    recipe, task = prepared.recipe, prepared.task
    config = models.load_config(prepared.checkpoint, recipe.model.trust_remote_code)
    if prepared.decoder is not None:
        decoder = models.load_config(prepared.decoder, recipe.model.trust_remote_code)
        config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(config, decoder)
    for key, value in task.model_kwargs().items():
        setattr(config, key, value)
    if config.pad_token_id is None and prepared.tokenizer.pad_token_id is not None:
        config.pad_token_id = prepared.tokenizer.pad_token_id
    try:
        with torch.device("meta"):
            model = getattr(transformers, task.auto_class).from_config(
                config, trust_remote_code=recipe.model.trust_remote_code
            )
    except ValueError as exc:
        raise UserError(f"model.name: {prepared.checkpoint.name} cannot be used for this task: {exc}") from None
    # A checkpoint's heads for this task are new (its missing keys when loading); the rest is pretrained.
    new_modules = [name for name, _ in model.named_children() if name in models.HEAD_MODULES and name != "lm_head"]
    return models.apply_method(model, recipe.method, task.peft_task_type, new_modules)


def layer_shape(model) -> Shape:
    """The widths of the model's transformer layers, from its (text) config; an encoder-decoder counts both stacks."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) and hasattr(config, "encoder"):
        config = config.encoder  # warm-started BERT2BERT: both stacks alike
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "d_model", "n_embd")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    if getattr(model.config, "is_encoder_decoder", False):
        layers += getattr(text, "num_decoder_layers", None) or layers
    head_size = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    names = [name for name, _ in model.named_modules()]
    return Shape(
        layers=layers,
        hidden=hidden,
        intermediate=_first(text, "intermediate_size", "n_inner", "d_ff", "ffn_dim", default=4 * hidden),
        heads=heads,
        kv_width=kv_heads * head_size,
        vocab=getattr(text, "vocab_size", 0),
        gated_mlp=any(name.endswith(("gate_proj", "w1", "wi_0")) for name in names),
        hidden_dropout=_first(text, "hidden_dropout_prob", "resid_pdrop", "dropout_rate", "dropout", default=0.0),
        attention_dropout=_first(
            text, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "dropout_rate", default=0.0
        ),
    )


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is None:
        raise UserError(f"model: its config has none of {', '.join(names)}; llmtune cannot estimate its memory")
    return default


def layer_activation_bytes(shape: Shape, seq: int, batch: int, element: int, attention_scores: bool) -> float:
    """Bytes autograd saves in one transformer layer for a batch x seq input (Korthikanti et al.'s count, tensor
    by tensor): with h=hidden, i=4h, element=2, scores and dropout it is s*b*h*(34 + 5*a*s/h)."""
    h, i = shape.hidden, shape.intermediate
    # inputs of the q/k/v and output projections, q, k and v themselves, and the two norms' inputs
    floats = 2 * h + h + 2 * shape.kv_width + 2 * h
    floats += h + 4 * i if shape.gated_mlp else h + 2 * i  # MLP input, (gate, up, act(gate), product) or (pre, post)
    masks = 2 * h if shape.hidden_dropout > 0 else 0  # one byte per element: the two residual dropouts' masks
    if attention_scores:  # the s x s probabilities per head, their dropout output and mask
        dropped = shape.attention_dropout > 0
        floats += shape.heads * seq * (2 if dropped else 1)
        masks += shape.heads * seq if dropped else 0
    return seq * batch * (floats * element + masks)


def keeps_attention_scores(model, device_type: str, attention_dropout: float) -> bool:
    """Whether attention saves its s x s probabilities: eager attention always; torch's SDPA only through its math
    kernel, which the CPU takes when attention dropout is on (its fused kernel has no dropout there)."""
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation == "eager":
        return True
    return implementation == "sdpa" and device_type == "cpu" and attention_dropout > 0


def batch_shape(training) -> tuple[int, int]:
    """(examples, tokens) of the largest training batch: batch_size x max_length, or, with a token budget, as many
    max_length examples as fit in it (length-grouped batches pad to their longest, so a batch of the longest
    examples is the one that peaks)."""
    seq = training.max_length
    if training.max_tokens:
        return max(1, training.max_tokens // seq), seq
    return training.batch_size, seq


def parameter_bytes(model, method, precision: str) -> tuple[float, float, float, int]:
    """(weights, gradients, autocast copies) in bytes, and the trained non-embedding parameter count."""
    quantization = getattr(method, "quantization", None)
    trained_bytes = 2 if precision == "bf16-pure" else 4
    frozen_bytes = 4 if precision == "fp32" else 2
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    quantizable = {
        id(m.weight)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not any(f".{head}" in f".{name}" for head in models.HEAD_MODULES)
    }
    weights = gradients = copies = 0.0
    trained_matmul = 0
    for param in model.parameters():
        count = param.numel()
        if param.requires_grad:
            weights += count * trained_bytes
            gradients += count * trained_bytes
            if id(param) not in embeddings:
                trained_matmul += count
                copies += count * 2 if precision.endswith("-mixed") else 0
        elif quantization and id(param) in quantizable:
            weights += count * (NF4_BYTES if quantization == "4bit" else INT8_BYTES)
        else:  # peft's k-bit preparation casts what stays unquantized to float32
            weights += count * (4 if quantization else frozen_bytes)
    return weights, gradients, copies, trained_matmul


def optimizer_bytes(trainable: int, optimizer: str, precision: str) -> float:
    if optimizer == "adamw_8bit":
        return trainable * 2.0
    return trainable * (4.0 if precision == "bf16-pure" else 8.0)  # torch's moments take the parameter's dtype


def logits_bytes(model, auto_class: str, shape: Shape, batch: int, seq: int, element: int, scored: int) -> float:
    """The output scores, the float32 log-softmax the loss keeps (and the float32 copy of 16-bit scores it takes
    first) and the scores' gradient. `scored`: positions per example that get a language model's scores (a causal
    LM's prompt -> completion loss computes them only where a completion token is predicted)."""
    width = getattr(model.config, "num_labels", 2)
    if auto_class in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
        width = shape.vocab
    elif auto_class == "AutoModelForQuestionAnswering":
        width = 2
    rows = batch * seq if auto_class in PER_TOKEN_OUTPUTS else batch
    if auto_class == "AutoModelForCausalLM":
        rows = batch * scored
    per_score = element + 4 + 4 + (4 if element != 4 else 0)
    return rows * width * per_score


def estimate(prepared: Prepared, device: torch.device | None = None, measure_peak: bool = True) -> Estimate:
    """Predict the peak training memory of `prepared`'s recipe (and a rough step time) without loading weights.

    Args:
        prepared: what `preparation.prepare` checked.
        device: the device to plan for; default: the one training would use here.
        measure_peak: time a short matmul probe on `device` for the step-time figure.

    Raises:
        UserError: the model's config lacks the widths the estimate needs, or the task cannot use the model.
    """
    recipe, training = prepared.recipe, prepared.recipe.training
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision_label(training.precision, prepared.precision)
    model = meta_model(prepared)
    shape = layer_shape(model)
    batch, seq = batch_shape(training)
    element = 4 if precision == "fp32" else 2
    weights, gradients, copies, trained_matmul = parameter_bytes(model, recipe.method, precision)
    trainable, total = models.count_parameters(model)
    scores = keeps_attention_scores(model, device.type, shape.attention_dropout)
    per_layer = layer_activation_bytes(shape, seq, batch, element, scores)
    embedding_out = seq * batch * (shape.hidden * element + (shape.hidden if shape.hidden_dropout > 0 else 0))
    if training.gradient_checkpointing:  # layer inputs, plus one layer recomputed at a time
        activations = shape.layers * seq * batch * shape.hidden * element + per_layer + embedding_out
    else:
        activations = shape.layers * per_layer + embedding_out
    # A causal LM scores the completion's positions only (llmtune.prompting.completion_loss): the task's
    # max_target_length of them, when it has one.
    scored = min(seq, getattr(recipe.task, "max_target_length", None) or seq)
    logits = logits_bytes(model, prepared.task.auto_class, shape, batch, seq, element, scored)
    components = {
        "weights": weights,
        "autocast copies": copies,
        "gradients": gradients,
        "optimizer": optimizer_bytes(trainable, training.optimizer, precision),
        "activations": activations,
        "logits": logits,
    }
    peak = weights + copies + components["optimizer"] + max(activations + logits, gradients)
    result = Estimate(components, peak, batch, seq, trainable, total, precision)
    result.notes.append(
        "attention keeps its s x s probabilities" if scores else "fused attention: no s x s probabilities kept"
    )
    _step_time(result, model, trained_matmul, device, measure_peak, training.gradient_checkpointing)
    return result


def _step_time(result: Estimate, model, trained_matmul: int, device, measure_peak: bool, recompute: bool) -> None:
    """Model FLOPs of one batch (llmtune.speed's 4 x all + 2 x trained non-embedding parameters per token; a
    recomputed forward pass adds 2 x all) over the measured matmul peak and the assumed MFU."""
    every, _ = speed.non_embedding_parameters(model)
    per_token = 4 * every + 2 * trained_matmul + (2 * every if recompute else 0)
    result.step_flops = float(per_token * result.batch_size * result.sequence_length)
    result.assumed_mfu = ASSUMED_MFU.get(device.type, ASSUMED_MFU["cpu"])
    if measure_peak:
        result.peak_flops = speed.matmul_peak_flops(device, seconds=0.3)
        result.step_seconds = result.step_flops / (result.peak_flops * result.assumed_mfu)


def table(result: Estimate) -> list[str]:
    """The estimate as lines of text: one per component, the peak, the batch shape and the step time."""
    lines = [f"{'component':<18}{'MB':>12}"]
    lines += [f"{name:<18}{value / 2**20:>12,.1f}" for name, value in result.components.items()]
    lines.append(f"{'peak (estimated)':<18}{result.peak_bytes / 2**20:>12,.1f}  ({result.peak_bytes / 2**30:.2f} GB)")
    lines.append(
        f"batch: {result.batch_size} x {result.sequence_length} tokens; precision {result.precision}; training "
        f"{result.trainable_parameters:,} of {result.total_parameters:,} parameters; " + "; ".join(result.notes)
    )
    lines.append(
        "peak = weights + autocast copies + optimizer + max(activations + logits, gradients); "
        "the process's libraries and data come on top"
    )
    if result.step_seconds is not None:
        lines.append(
            f"step time: ~{result.step_seconds:.3g} s per batch (rough: {result.step_flops / 1e9:,.1f} GFLOP at "
            f"{100 * result.assumed_mfu:.0f}% of a measured {result.peak_flops / 1e9:,.0f} GFLOP/s matmul peak)"
        )
    return lines
