"""Throughput accounting: samples/s, non-pad tokens/s, padding share and model FLOPs utilization.

MFU = 6 x non-embedding parameters x non-pad tokens per second / peak FLOP/s (the usual estimate of
forward + backward matmul cost; attention's quadratic term is left out). The peak is measured once per
run with a short matmul probe on the training device (fp32 on CPU, bf16 on GPU), because nominal
peaks say little about a shared or throttled machine.
"""

from __future__ import annotations

import time

import torch


def matmul_peak_flops(device: torch.device, seconds: float = 0.5) -> float:
    """Measured FLOP/s of square matmuls in the dtype training runs its matmuls in on this device."""
    on_gpu = device.type == "cuda"
    size = 4096 if on_gpu else 1024
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(3):  # warm-up
        a @ b
    while time.perf_counter() < deadline or best == 0.0:
        if on_gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(4 if on_gpu else 1):
            a @ b
        if on_gpu:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * size**3 * (4 if on_gpu else 1) / elapsed)
    return best


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables (looked up, not multiplied, so they cost no matmul FLOPs)."""
    embeddings = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    )
    return sum(p.numel() for p in model.parameters()) - embeddings


class Throughput:
    """Counts the tokens the training batches carry: real ones (attention mask) and padded ones."""

    def __init__(self) -> None:
        self.tokens = 0  # a tensor on the batch's device once counting starts: no GPU sync per step
        self.padded_tokens = 0

    def add(self, batch: dict) -> None:
        for key in ("attention_mask", "decoder_attention_mask"):
            mask = batch.get(key)
            if mask is not None:
                self.tokens = self.tokens + mask.sum()
                self.padded_tokens += mask.numel()

    def summary(self, examples: int, seconds: float, parameters: int, peak_flops: float) -> dict:
        tokens = int(self.tokens)
        tokens_per_s = tokens / seconds if seconds else 0.0
        return {
            "training_s": round(seconds, 2),  # without evaluations and checkpoints
            "samples_per_s": round(examples / seconds, 2) if seconds else 0.0,
            "tokens_per_s": round(tokens_per_s, 1),
            "padding_share": round(1 - tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "mfu": round(6 * parameters * tokens_per_s / peak_flops, 4) if peak_flops else 0.0,
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
