"""Speed benchmarks, the parts of `python -m bench` (listed in `bench`'s docstring)."""
