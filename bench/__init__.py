"""Benchmarks: side-by-side measurements (python -m bench.<name>), not tests."""
