"""Evaluation (paper §4): image-quality metrics and the speed benchmarks' full-size models."""
