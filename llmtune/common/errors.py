"""The exception for problems the user can fix, how a run that stops early says so, and the warnings the CLI
shows as one line each."""

import signal
from pathlib import Path


class UserError(Exception):
    """Bad input (recipe, data, model, paths): the CLI prints it as one line and exits with 2.

    The message must say what is wrong, where (key, file, line, column) and what was expected.
    Internal bugs raise ordinary exceptions instead, so they keep their traceback.
    """


class Notice(UserWarning):
    """Something the user should know and llmtune goes on with: the CLI prints it as one `warning:` line on stderr."""


class DataWarning(Notice):
    """Data that llmtune skips or changes (and goes on)."""


class Interrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved to {checkpoint}"
        )


class PeerLost(Exception):
    """Another process of a data-parallel run stopped, or stopped answering within training.collective_timeout_s;
    this process stops too (the run resumes from its last checkpoint)."""

    def __init__(self, step: int, error: BaseException):
        self.step = step
        reason = " ".join(str(error).split())[:200]
        super().__init__(
            f"another training process stopped or stopped answering at step {step} ({reason}); this process stops "
            "too. Continue from the last checkpoint with --resume"
        )
