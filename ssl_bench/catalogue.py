"""What ``ssl-bench list`` prints, cached so that listing does not import the plugins (nor torch).

Discovering plugins means importing them, and importing them means importing torch (about two
seconds). The listing changes only when the installed software changes, so the rows ``list``
prints are cached in ``$SSL_BENCH_CACHE`` (default ``$XDG_CACHE_HOME/ssl-bench``, else
``~/.cache/ssl-bench``) under a fingerprint of:

- every installed distribution's name and version (``pip install`` / ``uninstall`` of anything),
- every ``ssl_bench`` entry point (name and target),
- the size and modification time of every file under the core package, the plugins' top-level
  packages and the folders the grid files live in (an edited or added plugin or grid file).

A listing with a broken plugin is never cached: the fix (installing a missing dependency) may
change nothing the fingerprint sees. Any other command discovers the plugins as before; a cache
that cannot be read or written is ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from . import hookspecs

FORMAT = 1


@dataclasses.dataclass
class Row:
    name: str
    provider: str
    summary: str  # the tab-separated rest of the line ``list`` prints
    details: str = ""  # what ``list --verbose`` adds below it


@dataclasses.dataclass
class Catalogue:
    rows: dict[str, list[Row]]  # kind -> rows, sorted by name
    conflicts: list[tuple[str, str]]  # (kind, message)
    broken: list[tuple[str, str]]  # (line, details)
    watched: list[str]  # folders whose files the fingerprint covers


def cache_file() -> Path:
    root = os.environ.get("SSL_BENCH_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssl-bench"
    return Path(root) / "catalogue.json"


def _package_dirs() -> list[str]:
    """The folders of the core package and of every plugin's top-level package, found without
    importing them."""
    tops = {"ssl_bench"} | {ep.value.split(":")[0].split(".")[0]
                             for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)}
    dirs = []
    for top in sorted(tops):
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        dirs += list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    return dirs


def fingerprint(extra_dirs: list[str]) -> str:
    digest = hashlib.sha256(str(FORMAT).encode())
    dists = sorted(f"{d.name}=={d.version}" for d in importlib.metadata.distributions())
    eps = sorted(f"{ep.name}={ep.value}" for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
    digest.update(json.dumps([dists, eps]).encode())
    for folder in sorted(set(_package_dirs()) | set(extra_dirs)):
        digest.update(folder.encode())
        for root, subdirs, files in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                digest.update(f"{root}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def cached() -> Catalogue | None:
    """The cached catalogue if it is still that of the installed software, else None."""
    try:
        stored = json.loads(cache_file().read_text())
        if stored.get("format") != FORMAT or stored["fingerprint"] != fingerprint(stored["watched"]):
            return None
        return Catalogue(rows={k: [Row(*r) for r in rows] for k, rows in stored["rows"].items()},
                         conflicts=[tuple(c) for c in stored["conflicts"]], broken=[], watched=stored["watched"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(catalogue: Catalogue) -> None:
    if catalogue.broken:
        return
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "fingerprint": fingerprint(catalogue.watched), "watched": catalogue.watched,
                   "rows": {k: [dataclasses.astuple(r) for r in rows] for k, rows in catalogue.rows.items()},
                   "conflicts": catalogue.conflicts}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(payload, tmp)
        os.replace(tmp.name, path)
    except OSError:
        pass


def _grid_description(path) -> str:
    """A grid file's ``description`` (its first line)."""
    import tomllib

    try:
        return str(tomllib.loads(Path(path).read_text()).get("description", "")).split("\n")[0] or "-"
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"(unreadable: {type(exc).__name__})"


def from_registry(reg) -> Catalogue:
    """The rows ``list`` prints, from a discovered registry (this imports nothing new)."""
    from .params import describe

    rows: dict[str, list[Row]] = {}
    watched: set[str] = set()
    for kind in reg.items:
        rows[kind] = []
        for name in reg.names(kind):
            item = reg.items[kind][name]
            provider = reg.providers[kind][name].distribution
            details = ""
            if kind == "grids":
                watched.add(str(Path(item.path).resolve().parent))
                summary = f"{_grid_description(item.path)}\t{item.path}"
            else:
                if isinstance(item, type):  # methods and tasks: their docstring's first line
                    summary = (item.__doc__ or "").strip().split("\n")[0]
                else:
                    summary = item.help
                if kind == "metrics":
                    summary = f"{'higher' if item.higher_is_better else 'lower'} is better; {summary}"
                params = item.params() if kind == "methods" else getattr(item, "params", None)
                lines = [describe(params)] if params else []
                if kind == "tasks":
                    keys = ", ".join(f"{k} (required)" if k in item.required else k for k in item.keys)
                    lines.append(f"    metrics: {', '.join(item.metrics)}; uses labels: {str(item.uses_labels).lower()}"
                                 + (f"; keys: {keys}" if keys else ""))
                details = "\n".join(lines)
            rows[kind].append(Row(name, provider, summary, details))
    conflicts = [(kind, reg.conflict_message(kind, name)) for kind, names in reg.conflicts.items() for name in names]
    broken = [(f"{b.provider.distribution}\t{b.provider.entry_point} -> {b.provider.module}: {b.error}", b.details)
              for b in reg.broken]
    return Catalogue(rows, conflicts, broken, sorted(watched))


def catalogue() -> Catalogue:
    """The listing: from the cache when the installed software is unchanged, else discovered
    (importing every plugin) and cached."""
    found = cached()
    if found is None:
        from .registry import registry

        found = from_registry(registry())
        store(found)
    return found
