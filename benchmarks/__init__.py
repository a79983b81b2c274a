"""Grid files (grids/), the papers' reference numbers (references/) and performance benchmarks."""
