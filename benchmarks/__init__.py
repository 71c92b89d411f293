"""Benchmarks of eventfold against the raw driver and other libraries.

Run ``python -m benchmarks --help`` from the repository root.
"""
