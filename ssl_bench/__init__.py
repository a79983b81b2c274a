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
from .method import Batch, Method, TrainContext
from .backbone import Backbone, Classifier, create_model
from .data import DatasetSpec, ImageDataset
from .metric import Collected, Metric
from .task import EvalSpec, Plan, Task
from .views import Augmentation
from .results import read_curves, read_runs

__all__ = ["__version__", "hookimpl", "hookspec", "UserError", "ALL", "Count", "hyperparameter", "Batch", "Method",
           "TrainContext", "Backbone", "Classifier", "create_model", "DatasetSpec", "ImageDataset", "Task", "Plan",
           "EvalSpec", "Metric", "Collected", "Augmentation", "read_runs", "read_curves"]
