"""Benchmarks behind `make bench`: each figure is printed with a baseline measured in the same run."""
