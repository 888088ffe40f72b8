"""From a saved run to use: loading for inference, serving, export, merge, the hub."""
