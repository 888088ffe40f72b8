"""Throughput accounting: samples/s, non-pad tokens/s, padding share and model FLOPs utilization.

MFU = model FLOPs per second / peak FLOP/s. Each token a weight multiplies costs 2 FLOPs per weight in the
forward pass, 2 more for the gradient of its input in the backward pass, and 2 more for the weight's own
gradient when the weight is trained: (4 x frozen + 6 x trainable) non-embedding parameters per token, which is
the usual 6 x parameters for full fine-tuning and about 4 x for an adapter. Every token the model processes
counts: an encoder-decoder's encoder weights multiply the source tokens and its decoder weights the target
tokens. Attention's quadratic term and gradient checkpointing's recomputed forward pass are left out (model
FLOPs, not hardware FLOPs). The peak is measured with short matmul probes on the training device (fp32 on
CPU, bf16 on GPU), the best of many, because nominal peaks say little about a shared or throttled machine.
"""

from __future__ import annotations

import time

import torch

# Measured peaks, per device, for the life of the process: a notebook or a sweep runs many trainings on one device.
_measured_peaks: dict[str, float] = {}


def matmul_peak_flops(device: torch.device, seconds: float = 0.5) -> float:
    """Measured FLOP/s of square matmuls in the dtype training runs its matmuls in on this device (once per device
    and process; later calls return the first measurement)."""
    key = str(device)
    if key not in _measured_peaks:
        _measured_peaks[key] = _probe_matmul_peak(device, seconds)
    return _measured_peaks[key]


def _probe_matmul_peak(device: torch.device, seconds: float) -> float:
    on_gpu = device.type == "cuda"
    size = 4096 if on_gpu else 1024
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    # On a GPU, 32 matmuls between two synchronizations (several ms on an H200) and at most 20 timings: each sync
    # costs the host a round trip (the probe used to make over a thousand).
    per_timing, timings = (32, 20) if on_gpu else (1, 10**9)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(3):  # warm-up
        a @ b
    while (time.perf_counter() < deadline and timings > 0) or best == 0.0:
        timings -= 1
        if on_gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(per_timing):
            a @ b
        if on_gpu:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * size**3 * per_timing / elapsed)
    return best


def non_embedding_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters outside embedding tables (looked up, not multiplied: no matmul FLOPs)."""
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    }
    # peft keeps a frozen copy of a head it trains whole (modules_to_save) that the forward pass never uses.
    weights = [p for n, p in model.named_parameters() if id(p) not in embeddings and "original_module" not in n]
    return sum(p.numel() for p in weights), sum(p.numel() for p in weights if p.requires_grad)


def flops_per_token(model: torch.nn.Module) -> tuple[float, float]:
    """Training FLOPs per source token and per target token (the latter nonzero for encoder-decoders only)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    every, trained = non_embedding_parameters(model)
    if not getattr(model.config, "is_encoder_decoder", False):
        return 4 * every + 2 * trained, 0.0
    encoder, encoder_trained = non_embedding_parameters(model.get_encoder())
    return 4 * encoder + 2 * encoder_trained, 4 * (every - encoder) + 2 * (trained - encoder_trained)


class Throughput:
    """Counts the tokens the training batches carry: real ones (attention mask) and padded ones."""

    def __init__(self) -> None:
        # Tensors on the batch's device once counting starts: no GPU sync per step.
        self.tokens = 0  # the input's real tokens (attention mask)
        self.target_tokens = 0  # an encoder-decoder's decoder tokens: its labels that are not ignored
        self.padded_tokens = 0

    def add(self, batch: dict, encoder_decoder: bool = False) -> None:
        mask = batch["attention_mask"]
        self.tokens = self.tokens + mask.sum()
        self.padded_tokens += mask.numel()
        if encoder_decoder:
            self.target_tokens = self.target_tokens + (batch["labels"] != -100).sum()
            self.padded_tokens += batch["labels"].numel()

    def reduce(self, accelerator) -> None:
        """Sum the counts over every process (once, at the end of training)."""
        counts = [float(self.tokens), float(self.target_tokens), float(self.padded_tokens)]
        counts = accelerator.reduce(torch.tensor(counts, device=accelerator.device), "sum")
        self.tokens, self.target_tokens, self.padded_tokens = (int(count) for count in counts)

    def summary(self, examples: int, seconds: float, flops: tuple[float, float], peak_flops: float) -> dict:
        """flops: training FLOPs per source and per target token (`flops_per_token`)."""
        tokens, target_tokens = int(self.tokens), int(self.target_tokens)
        rate = 1 / seconds if seconds else 0.0
        model_flops = flops[0] * tokens + flops[1] * target_tokens
        return {
            "training_s": round(seconds, 2),  # without evaluations and checkpoints
            "samples_per_s": round(examples * rate, 2),
            "tokens_per_s": round((tokens + target_tokens) * rate, 1),
            "padding_share": round(1 - (tokens + target_tokens) / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "mfu": round(model_flops * rate / peak_flops, 4) if peak_flops else 0.0,
            "matmul_peak_gflops": round(peak_flops / 1e9, 1),
        }


def describe(train: dict) -> str:
    """One line for the log: what the run's speed figures mean."""
    return (
        f"{train['samples_per_s']:.1f} samples/s, {train['tokens_per_s']:.0f} non-pad tokens/s, "
        f"{100 * train['padding_share']:.1f}% padding, "
        f"MFU {100 * train['mfu']:.1f}% of {train['matmul_peak_gflops']:.0f} GFLOP/s measured matmul peak, "
        f"peak memory {train['peak_memory_mb']:.0f} MB"
        + (f" (GPU {train['peak_gpu_memory_mb']:.0f} MB)" if "peak_gpu_memory_mb" in train else "")
    )
