"""What a training run reports as it goes: console progress, the JSONL log (and trackers), and the clock that
keeps evaluation and checkpoint time out of the throughput figures."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from ..common import runs
from . import tracking


class Progress:
    """A progress bar on a terminal; plain log lines otherwise, so CI logs stay readable."""

    def __init__(self, total: int, enabled: bool, echo, stream=None):
        self.total, self.echo, self.enabled = total, echo, enabled
        stream = stream or sys.stderr
        self.interactive = enabled and stream.isatty()
        self.started = time.perf_counter()
        self.last_line = 0.0
        self.bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            # tqdm's own meter shows step/total, elapsed<ETA and steps/s; the postfix adds loss and samples/s.
            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=stream)

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=True)
            return
        now = time.perf_counter()
        if now - self.last_line >= 10 or step == self.total:
            self.last_line = now
            elapsed = now - self.started
            eta = elapsed / step * (self.total - step)
            self.echo(
                f"step {step}/{self.total}  loss={loss:.4f}  {samples_per_s:.1f} samples/s  "
                f"elapsed {elapsed:.0f}s  eta {eta:.0f}s"
            )

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.echo(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLog:
    """train_log.jsonl (main process only) and the experiment trackers: one entry per logged step or evaluation."""

    def __init__(self, run_dir: Path, accelerator):
        self.accelerator = accelerator
        self.file = open(run_dir / runs.LOG_FILE, "a", encoding="utf-8") if accelerator.is_main_process else None

    def write(self, entry: dict) -> None:
        if self.file:
            self.file.write(json.dumps(runs.finite(entry), allow_nan=False) + "\n")
            self.file.flush()
        self.accelerator.log(tracking.scalars(entry), step=entry["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()


class Clock:
    """Training seconds: wall time since the start, less the time spent evaluating and checkpointing."""

    def __init__(self):
        self.started = time.perf_counter()
        self.paused_s = 0.0

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - began

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def training(self) -> float:
        return self.wall() - self.paused_s
