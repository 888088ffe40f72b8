"""`llmtune merge`: fold a run's adapter into its base weights, a standalone transformers model."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..common import runs
from ..common.errors import UserError
from ..inference.saved import load_run
from ..recipe import Recipe, dump_recipe, load_recipe


def check_finished_run(run_dir: Path) -> Recipe:
    """The recipe of a finished run directory.

    Raises:
        UserError: not a directory, or not a finished run.
    """
    runs.require_finished_run(run_dir)
    return load_recipe(run_dir / runs.RECIPE_FILE)


def refuse_prefix_tuning(run_dir: Path, recipe: Recipe, refused: str) -> None:
    """Raises UserError: a prefix-tuning run, whose virtual tokens no weights can take in (merge, export)."""
    if recipe.method.type == "prefix_tuning":
        raise UserError(
            f"{run_dir}: prefix tuning adds virtual tokens instead of changing weights, so it cannot be {refused}"
        )


def merge(run_dir: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Fold a run's LoRA (or IA3) adapter into its base weights and save a standalone transformers model.

    Raises:
        UserError: not a finished adapter run, a method that cannot merge, or an output directory that holds
            anything but a merged model (a training run, an export or a sweep included).
    """
    run_dir, output = Path(run_dir), Path(output)
    recipe = check_finished_run(run_dir)
    if not (run_dir / runs.ADAPTER_CONFIG).is_file():
        raise UserError(
            f"{run_dir}: a full fine-tuning run (no {runs.ADAPTER_CONFIG}); "
            "it already is a standalone model, nothing to merge"
        )
    refuse_prefix_tuning(run_dir, recipe, "merged; push the adapter instead")
    runs.check_output_dir(output, overwrite, runs.MERGED_MODEL, "--output")
    loaded = load_run(run_dir)
    merged = loaded.model.merge_and_unload()
    with runs.staged_directory(output, runs.MERGED_MODEL) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        runs.write_atomic(staging / runs.RECIPE_FILE, dump_recipe(recipe))
        shutil.copy2(run_dir / runs.METRICS_FILE, staging / runs.METRICS_FILE)
    return output
