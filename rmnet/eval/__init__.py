"""Evaluation: descriptors, the features file, re-id metrics, re-ranking."""
