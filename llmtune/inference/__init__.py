"""Running a model over rows: loading a saved run, evaluation and prediction batches, the one no-grad loop, and
the devices it runs on. Training evaluates through this floor; `eval`, `predict`, `serve` and `export` start here."""
