"""Commands built on training and evaluation: `sweep` (hyper-parameter search), `audit` (label noise) and
`calibrate` (temperature scaling of a finished run)."""
