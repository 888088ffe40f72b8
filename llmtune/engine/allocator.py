"""`training.release_freed_memory`: keep the C heap from growing with every differently shaped batch (Linux, glibc).

glibc serves blocks over its mmap threshold (128 KiB at start) with their own mappings, given back to the system
when freed; but each time such a block is freed it raises the threshold to that block's size, up to 32 MiB. After
the first steps, a training step's activations (tens of MiB, another shape every batch) come from the heap instead,
whose freed holes later batches of other shapes fit only partly: resident memory climbs step after step. Fixing the
threshold (which turns off the raising) keeps large tensors in their own mappings. The price is a page fault for
every page of every large tensor, each step: on CPU, MiniLM QA (batch 32 x 384 tokens, gradient checkpointing,
60 steps) peaked at 2.2 GB instead of 4.5 GB with steps 29% slower (docs/benchmarks.md), so it is a recipe choice,
off by default. No library does this; PyTorch's documentation suggests swapping the allocator (jemalloc, tcmalloc)
with LD_PRELOAD, which a pip package cannot do for its users.

A user who sets glibc's malloc tunables (MALLOC_MMAP_THRESHOLD_ and the like, or glibc.malloc.* in GLIBC_TUNABLES)
keeps their own settings.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 128 * 1024  # glibc's starting value, kept fixed


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process; False where there is nothing to do (not glibc, or the user
    chose malloc settings)."""
    chosen = any(name.startswith("MALLOC_") for name in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or chosen:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
