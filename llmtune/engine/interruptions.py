"""Stopping a run from outside: SIGINT / SIGTERM ask it to stop after the current step with a checkpoint, and a
peer process that died or hung ends it too (both leave it resumable)."""

from __future__ import annotations

import os
import signal
import sys

import torch


def collective_failed(error: BaseException, num_processes: int) -> bool:
    """Whether an error of a several-process run came from a collective operation: a peer crashed or hung."""
    if num_processes < 2 or not isinstance(error, RuntimeError):
        return False
    signs = ("Timed out", "Connection closed by peer", "Connection reset by peer", "NCCL", "ProcessGroup", "gloo")
    return isinstance(error, torch.distributed.DistError) or any(sign in str(error) for sign in signs)


class StopSignals:
    """SIGINT / SIGTERM ask training to stop after the current step (with a checkpoint); a second one exits at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool):
        self.received: int | None = None
        self.announce = announce
        self.previous = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. an embedding application): leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            print(
                f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True
            )
            os._exit(128 + signum)
        self.received = signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name}: finishing the current step and saving a checkpoint "
                "(send it again to exit at once)",
                file=sys.stderr,
                flush=True,
            )

    def requested(self, accelerator) -> int | None:
        """The signal received by any process (all processes must stop at the same step), or None."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        received = int(accelerator.reduce(flag, "max").item())
        return received or None
