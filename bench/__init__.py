"""esm's benchmarks (`python -m bench`): see BENCHMARKS.md for what each figure means."""
