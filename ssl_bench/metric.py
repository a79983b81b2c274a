"""Metrics: named numbers computed at every evaluation from what the task collects.

A metric plugin is a :class:`Metric`: a name, a direction and a function of one evaluation
set's :class:`Collected` tensors (labels, the method's predictions, embeddings, and, for
cross-domain metrics, the collection of the task's other domain)::

    Metric("error", lambda c: 100.0 * float((c.predictions != c.labels).sum()) / len(c.labels),
           higher_is_better=False, needs=("predictions",), help="misclassified test images (%)")

A name ending in ``@*`` is a family: ``recall@4`` calls ``compute(collected, 4)``.

Every metric of every evaluation set gets the same summaries in the result row (see
:func:`summary_columns`): ``SPLIT_METRIC`` (final model), ``SPLIT_METRIC_min`` or ``_max``
(best over training: selection on that set, named by its direction), ``SPLIT_METRIC_last_k``
(median of the last k evaluations) and ``SPLIT_METRIC_best_val`` (at the evaluation where the
validation set's value of the same metric is best).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

#: what a metric may ask the evaluation to collect
NEEDS = ("predictions", "embeddings", "other")


@dataclasses.dataclass
class Collected:
    """One evaluation set's tensors for one run (on the training device).

    ``labels``: int64 N, the true classes (for retrieval: the held-out classes' ids);
    ``predictions``: int64 N, argmax of the method's scores (a cluster id for clustering);
    ``embeddings``: float N x D backbone embeddings, collected only if a metric needs them;
    ``other``: the collection of the task's other domain for this set (domain adaptation: the
    source test set beside the target test set), or None."""

    labels: torch.Tensor
    predictions: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    other: "Collected | None" = None

    def predictions_and_labels(self, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictions (on the labels' device) and labels, checked: ValueError naming
        ``metric`` if no predictions were collected or their shape differs from the labels'."""
        if self.predictions is None:
            raise ValueError(f"metric {metric!r} needs the predictions, and none were collected")
        if self.predictions.shape != self.labels.shape:
            raise ValueError(f"metric {metric!r}: predictions of shape {tuple(self.predictions.shape)} "
                             f"do not match labels of shape {tuple(self.labels.shape)}")
        return self.predictions.to(self.labels.device), self.labels


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric plugin (hook ``ssl_bench_metrics``)."""

    name: str
    compute: Callable[..., float]
    higher_is_better: bool
    needs: Sequence[str] = ("predictions",)
    help: str = ""

    @property
    def is_family(self) -> bool:
        return self.name.endswith("@*")

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise TypeError(f"metric {self.name!r}: needs {sorted(unknown)} unknown; choose from {NEEDS}")


def parse_metric_name(name: str) -> tuple[str, int | None]:
    """``"recall@4"`` -> (``"recall@*"``, 4); ``"error"`` -> (``"error"``, None)."""
    base, sep, arg = name.partition("@")
    if not sep:
        return name, None
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"metric {name!r}: the part after @ must be a positive integer, e.g. {base}@1")
    return f"{base}@*", int(arg)


#: the summaries of every (set, metric): suffix -> how it is named in table captions
SUMMARIES = {
    "": "of the final model, after the last step",
    "best": "best over all evaluations: selection on the evaluated set itself (for the test set an optimistic bound)",
    "last_k": "median of the last k evaluations (as FixMatch reports)",
    "best_val": "at the evaluation with the best validation value of the same metric",
}


def summary_suffix(summary: str, higher_is_better: bool) -> str:
    """Column suffix of a summary: the best is ``_min`` or ``_max`` by direction."""
    if summary == "":
        return ""
    if summary == "best":
        return "_max" if higher_is_better else "_min"
    return f"_{summary}"


def summary_columns(split: str, metric: str, higher_is_better: bool) -> dict[str, str]:
    """Column name -> description, for one evaluation set's metric (``test`` + ``error`` ->
    ``test_error``, ``test_error_min``, ``test_error_last_k``, ``test_error_best_val``)."""
    key = f"{split}_{metric}"
    return {key + summary_suffix(s, higher_is_better): f"{split} {metric}, {text}" for s, text in SUMMARIES.items()}
