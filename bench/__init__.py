"""Benchmarks that print figures and assert nothing: throughput, quality, and the paper's Table 1 with its baselines."""
