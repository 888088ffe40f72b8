"""Run reports, plots and their figures."""
