"""Measurement: MAC counts (a leaf the run uses too), profiles, and benchmarks against the libraries side by side."""
