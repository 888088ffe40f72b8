"""The report's "Can I trust this?" section: are the confidences calibrated, are the training labels clean, did
test rows leak into training, and is a difference between runs real. Read from the run directory's files, like
the rest of the report."""

from __future__ import annotations

import csv
from pathlib import Path

from ..common.figures import RELIABILITY_PNG
from .leakage import leakage_html

ISSUES_FILE = "label_issues.csv"  # llmtune audit's CSV (audit.ISSUES_FILE; reports do not import the API layer)
ISSUE_ROWS = 10


def take_reliability(images: dict[str, str]) -> dict[str, str]:
    """The reliability diagram(s) taken out of the report's plots (HTML names them reliability.png, Markdown by
    stem), to show in this section instead."""
    stem = Path(RELIABILITY_PNG).stem
    return {name: images.pop(name) for name in [n for n in images if Path(n).stem == stem]}


def trust_blocks(run_dir: Path, metrics: dict, reliability: dict[str, str]) -> list[tuple]:
    """Blocks ("h2", ...), ("p", ...), ("table", ...), ("image", ...), ("html", ...) of the section."""
    blocks: list[tuple] = [("h2", "Can I trust this?")]
    blocks += calibration_blocks(metrics, reliability)
    blocks += label_noise_blocks(run_dir)
    blocks += leakage_blocks(metrics)
    blocks += [
        ("h3", "Is a difference between runs real?"),
        (
            "p",
            "One run's score is one draw of the training seed and the test sample. Before preferring another run "
            "for a small difference, put them side by side with `llmtune compare RUN_A RUN_B`.",
        ),
    ]
    return blocks


def calibration_blocks(metrics: dict, reliability: dict[str, str]) -> list[tuple]:
    scored = {split: metrics[split]["ece"] for split in ("validation", "test") if "ece" in metrics.get(split, {})}
    if not scored:
        return []
    shown = ", ".join(f"{split} {value:.4f}" for split, value in scored.items())
    blocks: list[tuple] = [
        ("h3", "Are its confidences honest? (calibration)"),
        (
            "p",
            f"Expected calibration error (ECE; 15 equal-width bins of the top label's probability): {shown}. "
            "0 means that of the predictions made with 80% confidence, 80% are right; 0.05 means confidence and "
            "accuracy differ by 5 points on average.",
        ),
    ]
    fitted = metrics.get("validation", {}).get("calibration")
    if isinstance(fitted, dict):
        before = ", ".join(
            f"{key.removesuffix('_ece_before')} {value:.4f}" for key, value in fitted.items() if key.endswith("_before")
        )
        blocks.append(
            (
                "p",
                f"Temperature scaling (T={fitted['temperature']:.4f}, fitted on validation) is applied; ECE before "
                f"it: {before}. It changes confidences, never the predicted label.",
            )
        )
    else:
        blocks.append(
            (
                "p",
                "`llmtune calibrate RUN` (or `task.calibrate: true` in the recipe) fits temperature scaling on the "
                "validation split when the ECE is high; it changes confidences, never the predicted label.",
            )
        )
    return blocks + [("image", name, source) for name, source in reliability.items()]


def label_noise_blocks(run_dir: Path) -> list[tuple]:
    path = run_dir / ISSUES_FILE
    title = ("h3", "Are the training labels clean? (label noise)")
    if not path.is_file():
        return [
            title,
            (
                "p",
                "Not audited: `llmtune audit RUN` ranks the training rows most likely mislabeled (cleanlab on "
                "out-of-fold probabilities) into label_issues.csv, which this section then shows.",
            ),
        ]
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    flagged = sum(row.get("flagged") == "True" for row in rows)
    columns = ["location", "given_label", "suggested_label", "score", "text"]
    table = [[row.get(column, "") for column in columns] for row in rows[:ISSUE_ROWS]]
    return [
        title,
        (
            "p",
            f"llmtune audit flagged {flagged:,} of {len(rows):,} training rows as likely mislabeled "
            f"({ISSUES_FILE} ranks them all). The {len(table)} most likely, lowest label-quality score first:",
        ),
        ("table", ["where", "given label", "suggested", "score", "text"], table),
    ]


def leakage_blocks(metrics: dict) -> list[tuple]:
    """Train/test overlap: the leakage audit's counts and examples (metrics.json's `leakage`, written by training)."""
    fragment = leakage_html(metrics)
    return [
        ("h3", "Did test rows leak into training? (leakage)"),
        ("html", fragment) if fragment else ("p", "Not checked: the run has no leakage audit (data.leakage: off)."),
    ]
