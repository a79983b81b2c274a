"""Learning by Association (Haeusser, Mordvintsev, Cremers, CVPR 2017): the algorithm.

Each step, with a class-balanced labeled batch (x_A, y_A) and a uniform unlabeled batch x_B:

1. embed both batches with the same network: A = phi(x_A), B = phi(x_B)
2. associate A with B (eqs. 1-3, ssl_bench_plugins.methods.association)
3. L_walker: round trips A -> B -> A should end in the class they started from (eq. 4)
4. L_visit: every unlabeled sample should be visited (eq. 5); weight it down when B holds
   classes A lacks
5. L_classification: softmax cross-entropy of a linear head on A
6. minimise L = walker_weight * L_walker + visit_weight * L_visit + L_classification

With no unlabeled data (the "0" column of Table 3) only L_classification is active.

Step 1 is two forward passes, as the authors' code: with a batch-norm backbone each pass
normalises by its own batch's statistics and updates the running averages, so they move twice
per step (once towards the labeled batch, once towards the unlabeled one). The LbA networks
have no batch norm; with others (``timm:``, ``wrn28_2``) this is a choice worth knowing.
"""
from __future__ import annotations

import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter
from ssl_bench_plugins.methods.association import associate


class LearningByAssociation(Method):
    """Walker + weighted visit + classification loss (LbA §3, eqs. 1-5)."""

    name = "lba"
    walker_weight: float = hyperparameter(1.0, ge=0, help="weight of L_walker (eq. 4); the paper uses 1")
    visit_weight: float = hyperparameter(1.0, ge=0, help="weight of L_visit (eq. 5); Table 4 sweeps 0-1")
    log_epsilon: float = hyperparameter(1e-8, gt=0, help="eps in log(eps + p), as the reference code")

    def loss_terms(self, batch, model, ctx):
        if batch.x_unlabeled is None:
            return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        # Two forward passes, as in the reference code: with batch norm in the backbone (timm
        # models) each batch is normalised by its own statistics.
        a, b = model.embed(batch.x_labeled), model.embed(batch.x_unlabeled)
        association = associate(a, b, batch.y_labeled, self.log_epsilon)
        return {
            "classification": F.cross_entropy(model.head(a), batch.y_labeled),
            "walker": self.walker_weight * association.walker_loss,
            "visit": self.visit_weight * association.visit_loss,
        }


    @classmethod
    def figures(cls):
        from ssl_bench_plugins.methods.lba_figures import association

        return {"association": association}


@hookimpl
def ssl_bench_methods():
    return [LearningByAssociation]
