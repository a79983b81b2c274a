"""Supervised training on the labeled samples only: the baseline every table compares against."""
from __future__ import annotations

import torch.nn.functional as F

from ssl_bench import Method, hookimpl


class Supervised(Method):
    """Softmax cross-entropy on the labeled batch; unlabeled data is never drawn."""

    name = "supervised"
    uses_unlabeled = False

    def loss_terms(self, batch, model, ctx):
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}


@hookimpl
def ssl_bench_methods():
    return [Supervised]
