"""Training throughput benchmark (issue 5): the same as ``ssl-bench bench``; see benchmarks/perf/bench.py.

    python benchmarks/perf/throughput.py --device cuda --pack 32 --bf16 --json out.json
"""
import sys

from ssl_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
