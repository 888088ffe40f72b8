"""The metrics llmtune reports, as plain functions of predictions and references, computed offline.

classification.py (scikit-learn), entities.py (seqeval), squad.py (the official SQuAD logic) and generation.py
(ROUGE, BLEU, chrF)."""
