"""Evaluation: held-out measurements, the report card and its figures, and the model registry with its gate."""
