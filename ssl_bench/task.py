"""Tasks: which data roles a run draws and how it is evaluated (protocol key ``task``).

A task plugin is a :class:`Task` subclass. Given a run's configuration and its data sets (the
run's ``dataset`` as ``"source"`` and, for tasks that name one, ``target``), it draws the
run's :class:`Plan`: the labeled samples and the labels the method may see, the unlabeled
samples and the domain they come from, the evaluation sets and the width of the classifier
head. The engine turns a plan into batches and evaluations; methods never see the plan, only
batches and ``ctx`` (so a clustering task can keep every label away from training).

Built-ins (``plugins/tasks/``): ``ssl`` (the default), ``domain_adaptation``,
``clustering`` and ``retrieval``. A task author overrides :meth:`Task.check` (bad settings
fail before training) and :meth:`Task.plan`::

    class MyTask(Task):
        name = "my_task"
        metrics = ("error",)                  # computed on every evaluation set by default

        def plan(self, config, data):
            source = data["source"]
            subsets = draw_subsets(...)       # ssl_bench.data
            return Plan(domains={"source": source}, labels=..., subsets=subsets,
                        eval_sets=[EvalSpec("test", "source", "test")], num_outputs=source.num_classes)
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from .data import ImageDataset, Subsets
from .errors import UserError

#: the splits an evaluation set can be drawn from
SPLITS = ("train", "test", "validation")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluation set of a run.

    ``name`` prefixes its columns (``test`` -> ``test_error``); ``domain`` is a key of
    ``Plan.domains``; ``split`` is train | test | validation (the run's own validation draw);
    ``indices`` restricts the split (e.g. retrieval's held-out classes); ``other`` names the
    evaluation set of the other domain (for cross-domain metrics such as ``mmd``). Which
    metrics a set gets is the task's :meth:`Task.eval_metrics` (known before data are
    loaded, so the result columns are too)."""

    name: str
    domain: str
    split: str
    indices: np.ndarray | None = None
    other: str | None = None

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"evaluation set {self.name!r}: split {self.split!r} is not one of {', '.join(SPLITS)}")


@dataclasses.dataclass
class Plan:
    """A run's data roles, drawn by its task from the run's seed.

    - ``domains``: the data sets the run uses by role (``"source"``; ``"target"``); each is
      normalised and augmented with its own statistics and pipeline.
    - ``labels``: the labels of the labeled domain's training images as training may see them
      (int64, -1 = not given); the initial label vector a method may later extend.
    - ``subsets``: indices of the labeled samples (into the labeled domain's training set), the
      unlabeled samples (into ``unlabeled_domain``'s training set, or its separate unlabeled
      pool when ``unlabeled_from_pool``) and the validation samples.
    - ``eval_sets``: what is evaluated, in order; the first is the run's main set.
    - ``num_outputs``: the width of the classifier head (classes, clusters, training classes).
    """

    domains: dict[str, ImageDataset]
    labels: np.ndarray
    subsets: Subsets
    eval_sets: list[EvalSpec]
    num_outputs: int
    labeled_domain: str = "source"
    unlabeled_domain: str = "source"
    unlabeled_from_pool: bool = False
    #: evaluation labels by set name where they differ from the split's labels (retrieval)
    eval_labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Task:
    """Base class of task plugins; subclasses set ``name`` and implement :meth:`plan`."""

    name: ClassVar[str] = ""
    #: metrics computed on every evaluation set unless the set names its own
    metrics: ClassVar[tuple[str, ...]] = ("error",)
    #: whether training may see labels (clustering: no)
    uses_labels: ClassVar[bool] = True
    #: the protocol keys only this task (of the installed ones) reads; setting one for a run of
    #: another task is an error
    keys: ClassVar[tuple[str, ...]] = ()
    #: those of ``keys`` a run of this task must set
    required: ClassVar[tuple[str, ...]] = ()

    def data_roles(self, config: dict) -> dict[str, str]:
        """Role -> data-set name this run needs loaded: ``{"source": config["dataset"]}`` plus,
        for a task with a second data set, its role."""
        return {"source": config["dataset"]}

    def check(self, config: dict, data: dict[str, ImageDataset]) -> None:
        """Reject settings the data cannot serve (UserError), before anything trains."""

    def plan(self, config: dict, data: dict[str, ImageDataset]) -> Plan:
        raise NotImplementedError

    def eval_metrics(self, config: dict, name: str) -> tuple[str, ...]:
        """The metrics computed on the evaluation set ``name``: by default the task's
        ``metrics`` plus the run's ``metrics`` setting; override for per-set metrics."""
        return tuple(dict.fromkeys([*self.metrics, *config.get("metrics", [])]))

    def eval_set_names(self, config: dict) -> list[str]:
        """The names of the plan's ``eval_sets``, known without loading data (the result
        columns, and the tables' metrics, are checked against them before training)."""
        return ["test"] + (["val"] if config.get("n_validation") else [])


def check_task_class(cls: Any, provider: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"{provider}: ssl_bench_tasks returned {cls!r}, which is not a Task subclass")
    if not cls.name:
        raise TypeError(f"{provider}: task class {cls.__name__} has no name")


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless ``condition``: the one line a bad setting gets."""
    if not condition:
        raise UserError(message)


__all__ = ["EvalSpec", "Plan", "Task", "SPLITS", "require"]
