"""The plugin hooks of ssl-bench: every hook is specified here, in one place.

A plugin is a module named in the ``ssl_bench`` entry-point group of an installed
distribution::

    [project.entry-points.ssl_bench]
    my_method = "my_package.my_method"

whose functions marked ``@ssl_bench.hookimpl`` implement any of the hooks below. Each hook
returns a list of the things the plugin contributes. The built-in methods, backbones, data
sets, tasks, metrics, augmentation pipelines and grids are plugins of exactly this kind (see
``plugins/``, one folder per kind). A name ending in ``*`` is a family: ``timm:*`` answers to
``timm:resnet18``, ``recall@*`` to ``recall@4``.
"""
from __future__ import annotations

import pluggy

PROJECT = "ssl_bench"
ENTRY_POINT_GROUP = "ssl_bench"
#: the kinds of plugins, one hook each (``ssl_bench_<kind>``); ``registry.KINDS`` describes them
KIND_NAMES = ("methods", "backbones", "datasets", "tasks", "metrics", "augmentations", "grids")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ssl_bench_methods() -> list:
    """Return a list of :class:`ssl_bench.Method` subclasses (each with a unique ``name``)."""


@hookspec
def ssl_bench_backbones() -> list:
    """Return a list of :class:`ssl_bench.Backbone` specs: a name and a factory
    ``build(input_shape, **kwargs) -> nn.Module`` whose module has ``embedding_dim``.
    A name ending in ``*`` (e.g. ``"timm:*"``) is a family: ``timm:resnet18`` calls the
    factory with ``variant="resnet18"``."""


@hookspec
def ssl_bench_datasets() -> list:
    """Return a list of :class:`ssl_bench.DatasetSpec`: a name and a loader
    ``load(data_dir, **kwargs) -> ssl_bench.ImageDataset``."""


@hookspec
def ssl_bench_grids() -> list:
    """Return a list of paths (``str`` or ``pathlib.Path``) of grid TOML files. A grid's name
    is its ``name`` key, or the file's stem."""


@hookspec
def ssl_bench_tasks() -> list:
    """Return a list of :class:`ssl_bench.Task` subclasses: what data roles a run draws and how
    it is evaluated (protocol key ``task``; built-ins ssl, domain_adaptation, clustering,
    retrieval)."""


@hookspec
def ssl_bench_metrics() -> list:
    """Return a list of :class:`ssl_bench.Metric`: named numbers computed at each evaluation
    from what the task collects. A name ending in ``@*`` (``recall@*``) is a family."""


@hookspec
def ssl_bench_augmentations() -> list:
    """Return a list of :class:`ssl_bench.Augmentation`: named, batched augmentation
    pipelines that methods ask for as views (``Method.views``)."""
