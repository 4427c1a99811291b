"""Downstream (fine-tuning) datasets derived from the bundled corpora."""
