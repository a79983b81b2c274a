"""ssl-bench: a seeded, plugin-based benchmark suite for semi-supervised learning.

The public API for plugin authors::

    from ssl_bench import hookimpl, Method, Batch, TrainContext, hyperparameter
    from ssl_bench import Backbone, DatasetSpec, ImageDataset, UserError
"""
__version__ = "0.1.0"

from .hookspecs import hookimpl, hookspec
from .errors import UserError
from .params import ALL, Count, hyperparameter
from .method import Batch, Method, TrainContext
from .backbone import Backbone, Classifier
from .data import DatasetSpec, ImageDataset

__all__ = ["__version__", "hookimpl", "hookspec", "UserError", "ALL", "Count", "hyperparameter", "Batch", "Method",
           "TrainContext", "Backbone", "Classifier", "DatasetSpec", "ImageDataset"]
