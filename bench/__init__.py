"""Benchmarks: what orchestratord costs, side by side with the engine it fronts (see docs/benchmarks.md)."""
