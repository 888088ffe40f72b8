"""Reading data files and hub datasets, and augmenting the train split."""
