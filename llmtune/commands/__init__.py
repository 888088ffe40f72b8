"""Commands built on training and evaluation: sweep (hyper-parameter search), audit (label noise), calibrate."""
