"""The metrics llmtune reports, computed offline as plain functions of predictions and references: classification
(scikit-learn), entities (seqeval), SQuAD (the official script's logic) and generated text (ROUGE, BLEU, chrF)."""
