"""The built-in grids: every TOML file in benchmarks/grids/."""
from __future__ import annotations

from importlib import resources

from ssl_bench import hookimpl


@hookimpl
def ssl_bench_grids():
    folder = resources.files("ssl_bench_benchmarks") / "grids"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".toml"))
