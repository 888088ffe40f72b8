"""training.release_freed_memory keeps glibc from moving large tensors onto the heap, where differently shaped
batches fragment it and resident memory climbs step after step (llmtune/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, write_recipe, write_sentiment_files

from llmtune.common.errors import UserError

# In a fresh process (malloc settings are per process): free a 24 MiB tensor, which makes glibc raise its mmap
# threshold, then ask whether a new 2 MiB tensor got its own mapping (mallinfo2's hblkhd) or came from the heap.
PROBE = """
import ctypes, sys
import torch
if sys.argv[1] == "fixed":
    from llmtune.engine import allocator
    allocator.fix_mmap_threshold()
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
big = torch.ones(24 * 2**20, dtype=torch.uint8)
del big
before = libc.mallinfo2().hblkhd
block = torch.ones(2 * 2**20, dtype=torch.uint8)
print("mapped" if libc.mallinfo2().hblkhd - before >= 2 * 2**20 else "heap")
"""


def probe(mode: str, **env) -> str:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**environment, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()[-1]


def test_release_freed_memory_keeps_large_tensors_in_their_own_mappings():
    assert probe("plain") == "heap"  # glibc's own behaviour, which the setting is for
    assert probe("fixed") == "mapped"
    assert probe("fixed", MALLOC_ARENA_MAX="2") == "heap"  # a user's own malloc settings are left alone


def test_training_applies_it_only_when_the_recipe_asks(tiny_bert, tmp_path, monkeypatch):
    from llmtune import load_recipe
    from llmtune.engine import allocator, training

    calls = []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda: calls.append("fixed"))
    path = write_recipe(tmp_path / "r.yaml", tiny_bert, write_sentiment_files(tmp_path))
    for value in ("false", "true"):
        recipe = load_recipe(path, [f"training.release_freed_memory={value}", "data.train=null"])
        with pytest.raises(UserError, match="data.train: missing"):  # stops right after, before any loading
            training.train(recipe, output_dir=tmp_path / "run")
    assert calls == ["fixed"]
