"""Running a model over rows: loading a saved run, evaluation and prediction batches, the one no-grad loop.

Training evaluates through this floor; `eval`, `predict`, `serve` and `export` start here. saved.py loads a saved
model, evaluation.py and prediction.py run it (batches.py cuts the batches), devices.py sets up the Accelerator."""
