"""Whether a task's confidences can be trusted: expected calibration error (ECE), the bins of a reliability
diagram, and temperature scaling fitted on the validation split.

A task joins by mixing `TemperatureScaled` into its `Task` and `CalibrationOptions` into its options, and
dividing its logits by `self.temperature()` before turning them into probabilities. Single-label
classification uses the defaults (top-label confidence, softmax over the classes). A task whose decisions are
binary per label (multi-label) overrides `calibration_pairs` and `fitting_inputs`: a sigmoid probability p of a
logit z is the softmax of the two logits [0, z], so each (example, label) becomes a 2-class row
[log(1 - p), log p] and the same fit applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ..common.lazy import torch
from .base import TaskOptions

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017), so figures compare with the literature
# Bounds of the temperature search: outside them a model is not miscalibrated but broken (or constant).
TEMPERATURE_RANGE = (0.05, 20.0)
# Probabilities in prediction rows are rounded to 6 decimals; a 0 there stands for anything below 5e-7.
SMALLEST_PROBABILITY = 1e-7


class CalibrationOptions(TaskOptions):
    """The recipe fields of a task whose probabilities can be temperature-scaled."""

    tuned_fields: ClassVar[tuple[str, ...]] = ("temperature",)

    calibrate: bool = Field(
        False,
        description="After training, fit a temperature on the validation split (temperature scaling: lowest "
        "negative log-likelihood) and keep it in the run's recipe, so eval, predict, serve and export apply it. "
        "Needs data.validation.",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="Logits are divided by this before the softmax (set by task.calibrate or llmtune calibrate); "
        "null: 1, the model's own probabilities. Changes confidences, never which label is predicted.",
    )

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        if self.calibrate and recipe.data.validation is None:
            raise ValueError(
                "task.calibrate: temperature scaling is fitted on the validation split and the recipe has no "
                "data.validation; add one, or set task.calibrate: false"
            )


def bin_index(confidence: float, bins: int = ECE_BINS) -> int:
    """The bin (lo, hi] a confidence falls in; 0 goes to the first bin."""
    return min(max(math.ceil(confidence * bins) - 1, 0), bins - 1)


def calibration_bins(
    confidences: Sequence[float], correct: Sequence[float], bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each of `bins` equal-width bins over [0, 1]; (0, 0, 0) when empty."""
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for confidence, hit in zip(confidences, correct):
        entry = sums[bin_index(float(confidence), bins)]
        entry[0] += float(confidence)
        entry[1] += float(hit)
        entry[2] += 1
    return [(c / n, a / n, n) if n else (0.0, 0.0, 0) for c, a, n in sums]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[float], bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of examples) * |accuracy - mean confidence|: 0 for a calibrated model."""
    total = len(confidences)
    if total == 0:
        return float("nan")
    bin_stats = calibration_bins(confidences, correct, bins)
    return sum(count / total * abs(accuracy - confidence) for confidence, accuracy, count in bin_stats)


def mean_nll(log_probabilities: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Negative log-likelihood of the labels after dividing the log-probabilities (logits up to a constant per row,
    which the softmax ignores) by `temperature`."""
    scaled = (log_probabilities / temperature).log_softmax(-1)
    return float(-scaled.gather(1, labels[:, None]).mean())


def fit_temperature(log_probabilities: torch.Tensor, labels: torch.Tensor, steps: int = 80) -> float:
    """The temperature T that minimises the labels' negative log-likelihood under softmax(logits / T).

    A 1-D golden-section search on log T rather than LBFGS: with b = 1/T the NLL, -b z_y + logsumexp(b z), is
    convex in b, so it has one minimum along any monotone reparametrisation (log T included), which the search
    brackets exactly, deterministically, with no step size to tune and no optimizer state. 80 steps narrow the
    bracket by 0.618^80, far below any temperature that matters.
    """
    log_probabilities = log_probabilities.double()
    loss = lambda log_t: mean_nll(log_probabilities, labels, math.exp(log_t))  # noqa: E731
    low, high = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(steps):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return math.exp((low + high) / 2)


class TemperatureScaled:
    """What a task with calibrated probabilities adds to the contract (mixed in before its `Task` base class)."""

    def temperature(self) -> float:
        """The logits' divisor: the fitted temperature, or 1."""
        return self.options.temperature or 1.0

    def calibration_pairs(self, rows: list[dict]) -> tuple[list[float], list[float]]:
        """(confidence, 1 if right else 0) of each decision in prediction rows with references: the top label's
        probability (the row's score) and whether it is the reference."""
        scored = [row for row in rows if "reference" in row and row.get("score") is not None]
        return [row["score"] for row in scored], [float(row["predicted"] == row["reference"]) for row in scored]

    def fitting_inputs(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities [n, classes], label ids [n]) of prediction rows with references, classes in label
        order, as the current temperature left them."""
        names = self.label_names
        scored = [row for row in rows if "reference" in row]
        probabilities = torch.tensor([[row["probabilities"][name] for name in names] for row in scored])
        labels = torch.tensor([names.index(row["reference"]) for row in scored])
        return probabilities.double().clamp_min(SMALLEST_PROBABILITY).log(), labels

    def ece(self, rows: list[dict]) -> float:
        return expected_calibration_error(*self.calibration_pairs(rows))

    def fitted_temperature(self, rows: list[dict]) -> float:
        """The temperature that calibrates these rows' model: the current one times the one fitted on the rows
        (whose probabilities already went through the current one: softmax(log softmax(z / a) / b) is
        softmax(z / ab))."""
        log_probabilities, labels = self.fitting_inputs(rows)
        if len(labels) == 0:
            return self.temperature()
        return self.temperature() * fit_temperature(log_probabilities, labels)

    def tune(self, rows: list[dict]) -> str | None:
        """With `task.calibrate`: fit the temperature on the validation rows (the engine rescores them with it)."""
        if not self.options.calibrate:
            return None
        before = self.ece(rows)
        temperature = round(self.fitted_temperature(rows), 6)
        self.options = self.options.model_copy(update={"temperature": temperature})
        return (
            f"temperature scaling: T={temperature:.4f} fitted on {len(rows):,} validation rows "
            f"(validation ECE before: {before:.4f}; the rescored validation line shows it after)"
        )
