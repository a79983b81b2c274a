"""Shared test helpers: tiny grids on the real digits data, and plugin distributions made on
the fly (a real ``*.dist-info`` with ``entry_points.txt`` on sys.path, found by the same
importlib.metadata discovery as a pip-installed plugin)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssl_bench import registry as registry_module

ROOT = Path(__file__).resolve().parents[1]

#: a grid small enough to train in about a second per run on a CPU
TINY_GRID = """
name = "tiny"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
steps = 12
eval_every = 4
last_k = 2
labeled_per_class = 2
unlabeled_batch = 20
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[axes]
n_labeled = [20, 50]
n_unlabeled = [0, 100]
seed = [0, 1]
[[table]]
name = "t"
rows = "n_labeled"
columns = "n_unlabeled"
metric = "test_error"
"""


@pytest.fixture
def tiny_grid(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_GRID)
    return path


def write_grid(tmp_path: Path, text: str, name: str = "g.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def make_plugin_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Create an installed-looking distribution under ``root``: module files plus
    ``<dist>-0.0.1.dist-info/{METADATA,entry_points.txt}``. Returns ``root`` (put it on sys.path)."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ssl_bench]\n{lines}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """Returns add(dist, entry_points, modules): installs a fake distribution for this test
    (in-process via sys.path, and for subprocesses via PYTHONPATH)."""
    added = []

    def add(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        root = make_plugin_dist(tmp_path / f"site-{dist}", dist, entry_points, modules)
        monkeypatch.syspath_prepend(str(root))
        added.append(str(root))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(added + [os.environ.get("PYTHONPATH", "")]))
        importlib.invalidate_caches()
        registry_module.registry.cache_clear()
        return root

    yield add
    registry_module.registry.cache_clear()


@pytest.fixture(autouse=True, scope="session")
def listing_cache(tmp_path_factory):
    """``ssl-bench list``'s cache (ssl_bench/catalogue.py) in a folder of this test session, not
    the user's ~/.cache; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("ssl-bench-cache")
    previous = os.environ.get("SSL_BENCH_CACHE")
    os.environ["SSL_BENCH_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SSL_BENCH_CACHE", None)
    else:
        os.environ["SSL_BENCH_CACHE"] = previous


@pytest.fixture(autouse=True)
def fresh_registry():
    registry_module.registry.cache_clear()
    yield
    registry_module.registry.cache_clear()


def load_script(relative: str, name: str):
    """Import a script of the repository by path (benchmarks/ holds scripts, not only the
    installed package), once per test session."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``ssl-bench`` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ssl_bench.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def torch_calls(fn, *args) -> int:
    """How many torch functions ``fn(*args)`` calls: a per-sample Python loop makes this grow
    with the batch size, batched tensor code does not (a count, not a timing)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn(*args)
    return Count.calls


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (the CUDA parity tests) skip on a machine without a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
