"""Π-model (Laine & Aila, "Temporal ensembling for semi-supervised learning", ICLR 2017, §2.1,
Algorithm 1): the network should give the same output for two stochastic versions of an input.

Each step t, with a labeled batch (x_L, y_L) and an unlabeled batch B of n images in C classes:

1. z_i = f(g(x_i)) and z~_i = f(g(x_i)) for i in B: two evaluations of the network on two
   independent random augmentations g of the same image (the views ``("weak", "weak")``; and
   different dropout, if the backbone has dropout)
2. L_sup = mean softmax cross-entropy of f(x_L) against y_L
3. L_cons = 1 / (C n) * sum_i ||z_i - z~_i||^2 over the softmax outputs (Algorithm 1's
   normalisation: the mean over samples and classes)
4. w(t) = weight * exp(-5 (1 - T)^2), T = min(t / ramp_up, 1) (``ramps.sigmoid_rampup``)
5. minimise L = L_sup + w(t) L_cons

With no unlabeled data only L_sup is active.

Choices where the paper is silent or differs from this suite's loop, settled with the authors'
code (github.com/smlaine2/tempens, ``train.py`` and ``config.py``):

- Both branches carry gradients: Algorithm 1 has no stop-gradient and the code differentiates
  the squared error through both evaluations.
- ``weight`` = 100: the code's ``unsup_weight_max`` for the Π-model (SVHN and CIFAR-10). The code
  then multiplies it by M/N (labeled / all training inputs) because its cross-entropy is summed
  over the labeled members of a minibatch drawn from the whole training set and divided by the
  minibatch size, i.e. M/N times a mean over labeled samples. Here L_sup is that mean over a
  labeled batch, so the same balance between the terms is w_max itself, unscaled (the total is
  N/M times the code's, which Adam, the paper's optimiser, does not see).
- ``ramp_up`` = 40000 steps: the code ramps over the first 80 epochs (``rampup_length``), 500
  minibatches of 100 each on CIFAR-10 (about 58,600 on SVHN). The code evaluates the ramp once
  per epoch (a staircase); here at every step. The paper's learning-rate ramps are the
  protocol's schedule, not part of the method.
- Augmentation: g is a random translation by up to 2 px, plus a horizontal flip on CIFAR-10
  only (``augment_mirror``), and the network adds Gaussian input noise (sigma 0.15) and dropout
  0.5. Here g is the suite's ``weak`` view: flip + translation by up to 12.5% of the side
  (4 px at 32 x 32); data sets of symbols (digits, MNIST, SVHN) make their ``weak`` translation
  only, as the paper's SVHN runs. Noise and dropout belong to the backbone. A backbone with
  dropout draws random numbers inside the loss, so its runs train one by one, not packed.
- The consistency covers the unlabeled batch: Algorithm 1 sums over every sample of a minibatch
  drawn from all training inputs, labeled or not, which is the unlabeled pool of this suite
  with ``unlabeled_overlap = true`` (the default) and ``n_unlabeled = "all"``: the labeled
  images are in it, at their natural share.
- L_sup uses the plain labeled batch (the protocol's view: ``augment = true`` gives the data
  set's standard augmentation), as every method of the suite does, so a comparison with
  ``supervised`` changes only the unlabeled term; the paper's cross-entropy sees g(x).
- Separate forward passes for the labeled batch and each view (as LbA here): with batch norm each
  is normalised by its own statistics, as the paper's two evaluations are.

USB (microsoft/Semi-supervised-learning, ``semilearn/algorithms/pimodel``) differs: it detaches
the first view (a target, so only the second view gets gradients), ramps its weight linearly
over the first 40% of training (``unsup_warm_up = 0.4``) with ``lambda_u`` = 10 in its
classic-CV configs, freezes batch-norm statistics for the unlabeled passes, and augments the
labeled batch (flip + crop); its MSE is also the mean over classes and samples, and its two
unlabeled views are both weak, as here.
"""
from __future__ import annotations

import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter
from ssl_bench_plugins.methods.ramps import sigmoid_rampup


def softmax_mse(logits_a, logits_b):
    """1/(C n) sum_i ||softmax(a_i) - softmax(b_i)||^2: the mean over samples and classes."""
    return F.mse_loss(logits_a.softmax(1), logits_b.softmax(1))


class PiModel(Method):
    """Cross-entropy + w(t) * squared difference of two augmented evaluations (Algorithm 1)."""

    name = "pi_model"
    views = {"unlabeled": ("weak", "weak")}
    weight: float = hyperparameter(100.0, ge=0, help="w_max, the consistency weight after the ramp-up "
                                                     "(tempens code: 100 for the Π-model)")
    ramp_up: int = hyperparameter(40000, ge=0, help="steps of the Gaussian ramp-up exp(-5 (1 - T)^2) of w(t) "
                                                    "(paper: 80 epochs, 40000 steps on CIFAR-10); 0: none")

    def loss_terms(self, batch, model, ctx):
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if batch.x_unlabeled is not None:
            first, second = batch.views["unlabeled"]
            w = self.weight * sigmoid_rampup(ctx.step, self.ramp_up)
            terms["consistency"] = w * softmax_mse(model(first), model(second))
        return terms


@hookimpl
def ssl_bench_methods():
    return [PiModel]
