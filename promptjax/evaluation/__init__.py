"""Evaluation (rank classification, few-shot protocol, ARG, bootstrap) — issue 6."""
