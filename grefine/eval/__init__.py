"""Evaluation (paper §4): image-quality metrics, the databases, the benchmark's methods, the
result tables, and the speed benchmarks' full-size models."""
