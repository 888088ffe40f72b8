"""The training engine: preparation, setup components, the loop, evaluation, checkpoints and the sharding engines."""
