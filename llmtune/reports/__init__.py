"""Reports of finished runs: HTML and Markdown reports, plots, paired significance and the trust blocks."""
