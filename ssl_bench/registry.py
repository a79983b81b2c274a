"""Plugin discovery: every installed distribution's ``ssl_bench`` entry points, through pluggy.

Entry points are loaded one at a time so that one plugin failing to import (or failing inside
a hook) marks only that plugin as broken: ``ssl-bench list`` still works and shows it, and a
run that needs something it would have provided fails before training with its error.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.metadata
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .backbone import Backbone
from .data import DatasetSpec
from .errors import UserError
from .method import Method, check_method_class
from .metric import Metric
from .task import Task, check_task_class
from .views import Augmentation


def _instance_of(cls: type, kind: str):
    def check(thing: Any, provider: "Provider") -> Any:
        if not isinstance(thing, cls):
            raise TypeError(f"ssl_bench_{kind} returned {thing!r}, not an ssl_bench.{cls.__name__}")
        return thing
    return check


def _grid_source(thing: Any, provider: "Provider") -> "GridSource":
    from .grid import grid_name_of_file

    path = Path(thing)
    return GridSource(grid_name_of_file(path), path)


def _class_check(checker):
    def check(thing: Any, provider: "Provider") -> Any:
        checker(thing, str(provider))
        return thing
    return check


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of plugin: its hook ``ssl_bench_<name>``, the word for one item in messages, and
    the check each contributed item passes at discovery."""

    name: str
    label: str
    check: Callable[[Any, "Provider"], Any]


#: every kind of plugin, in one table: adding a kind is one line here and one hook spec
KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("methods", "method", _class_check(check_method_class)),
    Kind("backbones", "backbone", _instance_of(Backbone, "backbones")),
    Kind("datasets", "data set", _instance_of(DatasetSpec, "datasets")),
    Kind("tasks", "task", _class_check(check_task_class)),
    Kind("metrics", "metric", _instance_of(Metric, "metrics")),
    Kind("augmentations", "augmentation pipeline", _instance_of(Augmentation, "augmentations")),
    Kind("grids", "grid", _grid_source),
]}
assert tuple(KINDS) == hookspecs.KIND_NAMES


@dataclasses.dataclass(frozen=True)
class Provider:
    """Where a contribution comes from: the distribution and the entry point."""

    distribution: str
    entry_point: str
    module: str

    def __str__(self) -> str:
        return f"{self.distribution} (entry point {self.entry_point!r} -> {self.module})"


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    provider: Provider
    error: str  # one line: exception type and message
    details: str  # the traceback


@dataclasses.dataclass(frozen=True)
class GridSource:
    name: str
    path: Path


@dataclasses.dataclass
class Registry:
    """Everything the installed plugins contribute, by kind and name, with providers."""

    items: dict[str, dict[str, Any]]
    providers: dict[str, dict[str, Provider]]
    broken: list[BrokenPlugin]
    #: kind -> name -> the providers of a name provided more than once (usable by none of them)
    conflicts: dict[str, dict[str, list[Provider]]] = dataclasses.field(default_factory=dict)

    def conflict_message(self, kind: str, name: str) -> str:
        label = KINDS[kind].label
        first, *others = self.conflicts[kind][name]
        return (f"{label} name {name!r} is provided twice: by {first} and by {', '.join(map(str, others))}. "
                f"Uninstall one of these distributions or rename the {label} in one of them.")

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    def get(self, kind: str, name: str) -> Any:
        """The item ``name`` of ``kind`` (a family member such as ``timm:resnet18`` gives the
        family's item; see :meth:`family_member`)."""
        return self.family_member(kind, name)[0]

    def family_member(self, kind: str, name: str) -> tuple[Any, str | None]:
        """The item and, for a member of a family (``timm:*``, ``recall@*``), the variant
        (``resnet18``, ``4``)."""
        if name in self.items[kind]:
            return self.items[kind][name], None
        if name in self.conflicts.get(kind, {}):
            raise UserError(self.conflict_message(kind, name))
        for family, item in self.items[kind].items():
            prefix = family[:-1]
            if family.endswith("*") and name.startswith(prefix) and len(name) > len(prefix):
                return item, name[len(prefix):]
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        msg = f"unknown {KINDS[kind].label} {name!r}.{hint} Installed: {', '.join(known) or 'none'}."
        if self.broken:
            msg += " Broken plugins (they may have provided it): " + "; ".join(
                f"{b.provider.distribution}:{b.provider.entry_point}: {b.error}" for b in self.broken)
        raise UserError(msg)

    def method(self, name: str) -> type[Method]:
        return self.get("methods", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("datasets", name)

    def grid(self, name: str) -> GridSource:
        return self.get("grids", name)

    def task(self, name: str) -> type[Task]:
        return self.get("tasks", name)

    def augmentation(self, name: str) -> Augmentation:
        return self.get("augmentations", name)

    def metric(self, name: str) -> Metric:
        return self.get("metrics", name)

    def backbone(self, name: str) -> tuple[Backbone, str | None]:
        """The backbone spec and, for a family such as ``timm:*``, the variant (``resnet18``)."""
        return self.family_member("backbones", name)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
    # The same distribution can appear twice on sys.path (e.g. an editable install and a
    # build directory); keep the first, as the import system would.
    seen, unique = set(), []
    for ep in eps:
        key = (ep.dist.name if ep.dist else "", ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique


def load_registry(extra_plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Discover all plugins. ``extra_plugins`` are (name, module-or-object) pairs registered
    as if they came from a distribution of that name (for embedding ssl-bench in a script)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    broken: list[BrokenPlugin] = []
    providers: dict[int, Provider] = {}

    def fail(provider: Provider, exc: BaseException) -> None:
        broken.append(BrokenPlugin(provider, f"{type(exc).__name__}: {exc}",
                                   "".join(traceback.format_exception(exc))))

    for ep in _entry_points():
        provider = Provider(ep.dist.name if ep.dist else "?", ep.name, ep.value)
        try:
            plugin = ep.load()
            pm.register(plugin, name=f"{provider.distribution}:{ep.name}")
        except Exception as exc:  # a broken plugin must not break discovery
            fail(provider, exc)
            continue
        providers[id(plugin)] = provider
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
        providers[id(plugin)] = Provider(name, name, getattr(plugin, "__name__", repr(plugin)))

    items: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
    item_providers: dict[str, dict[str, Provider]] = {k: {} for k in KINDS}
    conflicts: dict[str, dict[str, list[Provider]]] = {}
    for kind in KINDS.values():
        hook = getattr(pm.hook, f"ssl_bench_{kind.name}")
        for impl in hook.get_hookimpls():
            provider = providers[id(impl.plugin)]
            try:
                contributed = [kind.check(thing, provider) for thing in impl.function() or []]
            except Exception as exc:
                fail(provider, exc)
                continue
            for thing in contributed:
                name = thing.name
                clash = conflicts.setdefault(kind.name, {})
                if name in clash:
                    clash[name].append(provider)
                elif name in items[kind.name]:  # neither wins: only what needs the name fails
                    clash[name] = [item_providers[kind.name].pop(name), provider]
                    del items[kind.name][name]
                else:
                    items[kind.name][name] = thing
                    item_providers[kind.name][name] = provider
    return Registry(items, item_providers, broken, {k: v for k, v in conflicts.items() if v})


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (discovered once)."""
    return load_registry()
