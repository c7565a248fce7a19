"""Benchmarks: commands that print tables of ratios measured in one run (never tests)."""
