"""ssl-bench: a seeded, plugin-based benchmark suite for semi-supervised learning.

The public API for plugin authors::

    from ssl_bench import hookimpl, Method, Batch, TrainContext, hyperparameter
    from ssl_bench import Backbone, DatasetSpec, ImageDataset, UserError

and for reading results: ``ssl_bench.read_runs(out, grid)``, ``ssl_bench.read_curves(out, grid)``.
"""
__version__ = "0.1.0"

from .hookspecs import hookimpl, hookspec
from .errors import UserError
from .params import ALL, Count, hyperparameter
from .method import Batch, Method, TrainContext
from .backbone import Backbone, Classifier
from .data import DatasetSpec, ImageDataset
from .results import read_curves, read_runs

__all__ = ["__version__", "hookimpl", "hookspec", "UserError", "ALL", "Count", "hyperparameter", "Batch", "Method",
           "TrainContext", "Backbone", "Classifier", "DatasetSpec", "ImageDataset", "read_runs", "read_curves"]
