"""Performance benchmarks (throughput, CCLP cost, augmentation): scripts and the `ssl-bench bench` code."""
