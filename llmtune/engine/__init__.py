"""The training engine: the checks before loading, setup, the loop and its state, checkpoints, sharding engines.

training.py is the loop (train = prepare, setup, fit, finish); preparation.py the checks, builders.py the setup,
session.py and state.py what the loop works with and changes, checkpoints.py what a checkpoint holds."""
