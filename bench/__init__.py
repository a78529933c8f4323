"""chatd benchmarks."""
