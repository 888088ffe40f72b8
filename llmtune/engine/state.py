"""The loop's state, which a checkpoint saves with the weights, and the loop's bookkeeping: when a checkpoint is
due, the best validation so far, and when to stop early."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..recipe import Evaluation, Recipe


@dataclass
class TrainingState:
    """Where training stands: everything the loop changes as it goes, and what a checkpoint saves with the weights,
    the optimizer and the schedule. `window_loss` differs per process and is saved per process."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` trained on, counted over all processes (the sampler's batches)
    examples_seen: int = 0
    window_batches: int = 0  # batches summed into the not yet logged training loss
    window_loss: float | object = 0.0  # their summed loss: a tensor on the device while training (no sync per step)
    best_step: int | None = None  # evaluation.metric_for_best: the best validation so far, and patience
    best_value: float | None = None
    best_metrics: dict | None = None
    evals_without_improvement: int = 0
    num_processes: int = 1

    def shared(self) -> dict:
        """The fields every process holds alike (state.json)."""
        return {key: value for key, value in asdict(self).items() if key != "window_loss"}

    def add_batch(self, loss, examples: int, num_processes: int) -> None:
        """Count one training batch of every process (each process adds its own loss)."""
        self.window_loss = self.window_loss + loss
        self.window_batches += 1
        self.batches_done += num_processes
        self.examples_seen += examples * num_processes

    def start_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = 0


def checkpoint_due(recipe: Recipe, step: int, epoch_done: bool) -> bool:
    options = recipe.checkpointing
    return bool(options.every_n_steps and step % options.every_n_steps == 0) or (options.at_epoch_end and epoch_done)


def update_best(options: Evaluation, state: TrainingState, metrics: dict) -> bool:
    """Record a validation evaluation for evaluation.metric_for_best; True when it is the best so far (its
    checkpoint must be saved). Always False without metric_for_best."""
    if options.metric_for_best is None:
        return False
    value = metrics[options.metric_for_best]
    better = state.best_value is None or (
        value > state.best_value if options.best_mode == "max" else value < state.best_value
    )
    if better:
        state.best_step, state.best_value, state.best_metrics, state.evals_without_improvement = (
            state.step,
            value,
            metrics,
            0,
        )
    else:
        state.evals_without_improvement += 1
    return better


def should_stop(options: Evaluation, state: TrainingState) -> bool:
    """Early stopping: evaluation.early_stopping_patience evaluations without improvement."""
    patience = options.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience
