"""Classification metrics: the test error (%) and its complement, the accuracy (%).

``error`` = 100 * #{i : prediction_i != label_i} / N, the number every SSL paper's tables
report as "test error" (e.g. Oliver et al., "Realistic evaluation of deep semi-supervised
learning algorithms", NeurIPS 2018; Sohn et al., "FixMatch", NeurIPS 2020). It is computed
exactly as ``100.0 * int((pred != labels).sum()) / len(labels)``: an integer count, then one
float multiplication and one division, so committed results reproduce to the last bit (do not
rewrite it as a mean of booleans or as 100 - accuracy).

``accuracy`` = 100 * #{i : prediction_i == label_i} / N, computed the same way from the count
of correct predictions (so ``error + accuracy`` is 100 up to float rounding).

An empty evaluation set gives ``nan`` for both (no images, no rate).
"""
from __future__ import annotations

import math


from ssl_bench.hookspecs import hookimpl
from ssl_bench.metric import Collected, Metric


def error(collected: Collected) -> float:
    """Misclassified images (%): ``100.0 * int((pred != labels).sum()) / len(labels)``;
    ``nan`` for an empty set."""
    pred, labels = collected.predictions_and_labels("error")
    if len(labels) == 0:
        return math.nan
    return 100.0 * int((pred != labels).sum()) / len(labels)


def accuracy(collected: Collected) -> float:
    """Correctly classified images (%): ``100.0 * int((pred == labels).sum()) / len(labels)``;
    ``nan`` for an empty set."""
    pred, labels = collected.predictions_and_labels("accuracy")
    if len(labels) == 0:
        return math.nan
    return 100.0 * int((pred == labels).sum()) / len(labels)


@hookimpl
def ssl_bench_metrics():
    return [
        Metric("error", error, higher_is_better=False, needs=("predictions",),
               help="misclassified images (%): 100 * #(prediction != label) / N"),
        Metric("accuracy", accuracy, higher_is_better=True, needs=("predictions",),
               help="correctly classified images (%): 100 * #(prediction == label) / N"),
    ]
