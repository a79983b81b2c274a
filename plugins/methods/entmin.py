"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised learning by entropy
minimization", NIPS 2005): the conditional-entropy regulariser.

Each step, with a labeled batch (x_L, y_L) and an unlabeled batch x_U:

1. L_sup = softmax cross-entropy of the labeled batch
2. H(y | x_U) = mean over the unlabeled batch of -sum_c p_c log p_c, p = softmax(f(x_U))
3. minimise L = L_sup + lambda H(y | x_U)

With no unlabeled data only L_sup is active.

Choices where the paper is silent (it states a penalised likelihood for a generic model, not a
deep-network training loop): the entropy is averaged (not summed) over the unlabeled batch, so
lambda does not depend on the batch size; p log p is computed from log_softmax (exact and
finite for saturated predictions, no epsilon); the weight is constant (no ramp-up); gradients
flow through p into the whole network, head included; labeled and unlabeled batches go through
separate forward passes (as LbA here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_c p_ic log p_ic of p = softmax(logits) (rows: samples), in nats."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


class EntropyMinimisation(Method):
    """Supervised cross-entropy + lambda * mean prediction entropy on unlabeled data (G&B 2005)."""

    name = "entmin"
    weight: float = hyperparameter(1.0, ge=0, help="lambda: weight of the mean conditional entropy")

    def loss_terms(self, batch, model, ctx):
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if batch.x_unlabeled is not None:
            terms["entropy"] = self.weight * mean_entropy(model(batch.x_unlabeled))
        return terms


@hookimpl
def ssl_bench_methods():
    return [EntropyMinimisation]
