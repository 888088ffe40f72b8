"""From a saved run to use: serving it over HTTP (serve*.py, generate.py), exporting it to ONNX, merging an adapter
into its base, and the hub (push and pull)."""
