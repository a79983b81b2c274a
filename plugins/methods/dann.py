"""DANN, domain-adversarial training (Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette,
Marchand, Lempitsky, "Domain-Adversarial Training of Neural Networks", JMLR 2016): the
dissertation's Table 2 baseline.

A domain classifier d (method-owned: ``build_modules``) reads the embeddings through a gradient
reversal layer R_lambda (identity forward, -lambda times the gradient backward, eq. 17). Each
step, with a labeled source batch (x_s, y_s) and a target batch x_t:

1. A = phi(x_s), B = phi(x_t)
2. L_y = cross-entropy of the label head on A                                   (eq. 18's L_y)
3. L_d = binary cross-entropy of d(R(A)) against "source" (0) and d(R(B)) against "target" (1),
   averaged over both batches                                                    (eq. 18's L_d)
4. minimise L = L_y + ``weight`` L_d: d learns to tell the domains apart, and through the
   reversal phi learns embeddings it cannot (the saddle point of eq. 18)

lambda_p = 2 / (1 + exp(-gamma p)) - 1, p = step / steps, gamma = 10 (§5.2.2: the adaptation
factor grows from 0 so that the domain classifier's early noise does not reach phi).

Choices: the domain classifier is an MLP on the embedding with ReLU hidden layers (``hidden``,
default one layer of 100: the paper's MNIST domain classifier; its SVHN and GTSRB ones are 1024 -
1024, ``hidden = [1024, 1024]``). The paper's lr annealing mu_p = mu_0 / (1 + 10 p)^0.75 and SGD
momentum 0.9 are protocol (the grid's optimiser), not method; the gradient reversal is written
as x.detach() - lambda (x - x.detach()), a pure tensor expression (exactly x forward, -lambda
backward) that packs and compiles like any other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import Method, hookimpl, hyperparameter
from ssl_bench_plugins.methods.ramps import dann_lambda


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    """R_lambda (eq. 17): x forward (exactly: x - x.detach() is 0); the gradient times -lambda backward."""
    return x.detach() - lam * (x - x.detach())


class DomainAdversarial(Method):
    """Source classification + a domain classifier through gradient reversal (Ganin et al. 2016, eq. 18)."""

    name = "dann"
    weight: float = hyperparameter(1.0, ge=0, help="weight of the domain loss L_d")
    gamma: float = hyperparameter(10.0, ge=0, help="gamma of lambda_p = 2 / (1 + exp(-gamma p)) - 1 (paper: 10)")
    hidden: list[int] = hyperparameter([100], ge=1, help="hidden widths of the domain classifier (paper: MNIST "
                                                          "[100], SVHN/GTSRB [1024, 1024])")

    def build_modules(self, model, num_outputs):
        widths = [model.embedding_dim, *self.hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        return {"domain_classifier": nn.Sequential(*layers, nn.Linear(widths[-1], 1))}

    def loss_terms(self, batch, model, ctx):
        if batch.x_unlabeled is None:
            return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        a, b = model.embed(batch.x_labeled), model.embed(batch.x_unlabeled)
        lam = dann_lambda(ctx.step / max(ctx.steps, 1), self.gamma)
        d = model.extras["domain_classifier"]
        logits = torch.cat([d(reverse_gradient(a, lam)), d(reverse_gradient(b, lam))]).squeeze(1)
        domains = torch.cat([logits.new_zeros(len(a)), logits.new_ones(len(b))])
        return {"classification": F.cross_entropy(model.head(a), batch.y_labeled),
                "domain": self.weight * F.binary_cross_entropy_with_logits(logits.float(), domains.float())}


@hookimpl
def ssl_bench_methods():
    return [DomainAdversarial]
