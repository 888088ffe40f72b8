"""Reading a recipe's splits (local files or the hub), augmenting the train split, and the leakage audit.

schema.py is the recipe's data section; reading.py, augment.py and leakage.py do the work."""
