"""ssl-bench: a seeded, plugin-based benchmark suite for semi-supervised learning.

The public API for plugin authors::

    from ssl_bench import hookimpl, Method, Batch, TrainContext, hyperparameter
    from ssl_bench import Backbone, DatasetSpec, ImageDataset, UserError, create_model
    from ssl_bench import Task, Plan, EvalSpec, Metric, Collected, Augmentation

and for reading results: ``ssl_bench.read_runs(out, grid)``, ``ssl_bench.read_curves(out, grid)``.
"""
__version__ = "0.2.0"

from .hookspecs import hookimpl, hookspec
from .errors import UserError
from .params import ALL, Count, hyperparameter

#: the rest of the API, imported on first use (PEP 562), so that `ssl-bench --help` and code that
#: only needs the hooks and parameters do not pay for importing torch and pyarrow
_LAZY = {"Batch": "method", "Method": "method", "TrainContext": "method", "Backbone": "backbone",
         "Classifier": "backbone", "create_model": "backbone", "DatasetSpec": "data", "ImageDataset": "data",
         "Collected": "metric", "Metric": "metric", "EvalSpec": "task", "Plan": "task", "Task": "task",
         "Augmentation": "views", "read_curves": "results", "read_runs": "results"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ssl_bench' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["__version__", "hookimpl", "hookspec", "UserError", "ALL", "Count", "hyperparameter", "Batch", "Method",
           "TrainContext", "Backbone", "Classifier", "create_model", "DatasetSpec", "ImageDataset", "Task", "Plan",
           "EvalSpec", "Metric", "Collected", "Augmentation", "read_runs", "read_curves"]
