"""MixUp as a semi-supervised baseline: the "MixUp" baseline MixMatch is compared with
(Berthelot et al., NeurIPS 2019, §4.2), built on MixUp (Zhang, Cisse, Dauphin, Lopez-Paz,
"mixup: Beyond Empirical Risk Minimization", ICLR 2018).

The MixMatch paper adapts MixUp, a supervised regulariser, to SSL by applying it both to the
augmented labeled examples and to the augmented unlabeled ones with the model's predictions as
their labels, with MixUp's usual cross-entropy against the mixed (guessed) label. Each step,
with a labeled batch X = ((x_b, p_b)) (p_b one-hot) and an unlabeled batch U = (u_b):

1. x^_b = Augment(x_b), u^_b = Augment(u_b)              (one ``weak`` view of each)
2. q_b = softmax(f(u^_b)): the guessed label, no gradient, no sharpening, one view
3. X' = MixUp of X^ with itself, U' = MixUp of U^ = ((u^_b, q_b)) with itself:
       lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda)
       x' = lambda' x1 + (1 - lambda') x2,  p' = lambda' p1 + (1 - lambda') p2
   (``partners = "all"``: partners drawn from Concat(X^, U^) as MixMatch's W instead)
4. L_X = mean over X' of H(p', softmax(f(x')))
   L_U = mean over U' of H(q', softmax(f(u')))
         (``unlabeled_loss = "squared_error"``: 1/(L |U'|) sum ||q' - softmax(f(u'))||^2, MixMatch's L_U)
5. minimise L = L_X + w(t) L_U, w(t) = weight * exp(-5 (1 - T)^2), T = min(t / ramp_up, 1)
   (``ramps.sigmoid_rampup``; ``ramp_up = 0``: w = weight from the start)

With no unlabeled data only L_X is active (supervised MixUp).

Where the defaults come from: the baseline's official code, github.com/google-research/mixmatch
``mixup.py`` (read, not copied) and its ``runs/table5.sh`` / ``table6.sh``:

- labeled examples are mixed with labeled ones and unlabeled with unlabeled ones (``partners =
  "own"``), each batch with its own Beta draws (``augment`` is applied to x and to y separately);
- the guess is the plain softmax of the network on the same augmented unlabeled image, held
  constant (``stop_gradient``), no sharpening, no averaging over views;
- both terms are cross-entropies against the mixed soft labels (``unlabeled_loss =
  "cross_entropy"``), added with weight 1 and no ramp-up (``weight`` = 1, ``ramp_up`` = 0);
- ``alpha`` = 0.75: the runs for CIFAR-10 (``--beta=0.75``); SVHN and SVHN+extra use 0.25; the
  flag's default is 0.5;
- ``lambda_per`` = "sample": one lambda per pair (``Beta(beta, beta).sample([batch, 1, 1, 1])``),
  lambda' = max(lambda, 1 - lambda) as in MixMatch (the baseline uses lambda' too).

The squared error, partners from both batches and a ramp-up are options, for the variant that
mixes labeled with unlabeled examples and treats the unlabeled term as a consistency loss
(``partners = "all"``, ``unlabeled_loss = "squared_error"``, ``ramp_up`` > 0: close to MixMatch
with K = 1 and no sharpening).

Choices where the code and the paper leave room:

- The mixing partner of example i is example perm[i] of a random permutation from the run's
  generator; the code pairs a batch with its reverse (x[::-1]), which over a random batch is
  also a random pairing, but always a symmetric one (i with N-1-i). Beta draws come from the
  same generator (``mixing.beta_sample``), so random numbers inside the loss make MixUp runs
  train one by one, not packed.
- Separate forward passes for X' and U' (as the code): with batch norm each is normalised by its
  own statistics, and only the labeled pass updates the running averages (the code keeps only
  the first pass's update ops); the guessing pass and the unlabeled pass run with the running
  statistics frozen.
- The labeled batch is seen through its ``weak`` view (the code augments both batches), not the
  plain ``batch.x_labeled``.
- Protocol, not method: the code trains with Adam (lr 0.002), batches of 64 + 64, an EMA of the
  weights (0.999) and decoupled weight decay 0.02 x lr, as MixMatch (see mixmatch.py).

USB (microsoft/Semi-supervised-learning) has no MixUp baseline among its algorithms; its MixUp
(``mixup_one_target``, inside MixMatch) draws one lambda per batch from numpy's global RNG and
the permutation from torch's global RNG.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.methods.mixing import mix, mixup_weights
from ssl_bench_plugins.methods.mixmatch import soft_cross_entropy
from ssl_bench_plugins.methods.ramps import sigmoid_rampup
from ssl_bench_plugins.methods.vat import batchnorm_statistics_frozen


class MixUpBaseline(Method):
    """MixUp of labeled examples and of unlabeled examples with the model's own guesses; L_X + w(t) L_U."""

    name = "mixup"
    views = {"labeled": ("weak",), "unlabeled": ("weak",)}
    alpha: float = hyperparameter(0.75, ge=0, help="Beta(alpha, alpha) of MixUp (code runs: CIFAR-10 0.75, SVHN "
                                                  "0.25); 0: no mixing")
    weight: float = hyperparameter(1.0, ge=0, help="weight of the unlabeled term after the ramp-up (code: 1)")
    ramp_up: int = hyperparameter(0, ge=0, help="steps of the Gaussian ramp-up exp(-5 (1 - T)^2) of the weight; "
                                                "0: none (the code)")
    unlabeled_loss: Literal["cross_entropy", "squared_error"] = hyperparameter(
        "cross_entropy", help="L_U: cross-entropy against the mixed guess (the code) or MixMatch's squared error")
    partners: Literal["own", "all"] = hyperparameter(
        "own", help="mix labeled with labeled and unlabeled with unlabeled (the code), or with partners drawn "
                    "from both batches (MixMatch's W)")
    lambda_per: Literal["sample", "batch"] = hyperparameter(
        "sample", help="one lambda per example (the code) or one per batch")

    def loss_terms(self, batch, model, ctx):
        if batch.y_labeled is None:
            raise UserError("mixup needs labeled samples (its L_X); this run's task gives none")
        g = ctx.generator
        per_sample = self.lambda_per == "sample"
        (x_hat,) = batch.views["labeled"]
        p = F.one_hot(batch.y_labeled, ctx.num_classes).to(x_hat.dtype)
        b = x_hat.shape[0]
        unlabeled = batch.views.get("unlabeled")
        if not unlabeled:  # supervised MixUp
            perm = torch.randperm(b, generator=g, device=x_hat.device)
            mixed_x, mixed_p = mix(x_hat, p, mixup_weights(self.alpha, b, g, x_hat.device, per_sample), perm)
            return {"classification": soft_cross_entropy(model(mixed_x), mixed_p)}
        (u_hat,) = unlabeled
        n = u_hat.shape[0]
        with torch.no_grad(), batchnorm_statistics_frozen(model):
            q = model(u_hat).float().softmax(1).to(u_hat.dtype)  # the guess: no sharpening
        if self.partners == "own":
            perm_x = torch.randperm(b, generator=g, device=x_hat.device)
            perm_u = torch.randperm(n, generator=g, device=u_hat.device)
            mixed_x, mixed_p = mix(x_hat, p, mixup_weights(self.alpha, b, g, x_hat.device, per_sample), perm_x)
            mixed_u, mixed_q = mix(u_hat, q, mixup_weights(self.alpha, n, g, u_hat.device, per_sample), perm_u)
        else:
            perm = torch.randperm(b + n, generator=g, device=x_hat.device)
            lam = mixup_weights(self.alpha, b + n, g, x_hat.device, per_sample)
            mixed, targets = mix(torch.cat([x_hat, u_hat]), torch.cat([p, q]), lam, perm)
            (mixed_x, mixed_u), (mixed_p, mixed_q) = mixed.split([b, n]), targets.split([b, n])
        l_x = soft_cross_entropy(model(mixed_x), mixed_p)
        with batchnorm_statistics_frozen(model):
            logits_u = model(mixed_u)
        if self.unlabeled_loss == "cross_entropy":
            l_u = soft_cross_entropy(logits_u, mixed_q)
        else:
            l_u = F.mse_loss(logits_u.float().softmax(1), mixed_q.float())
        return {"classification": l_x, "consistency": self.weight * sigmoid_rampup(ctx.step, self.ramp_up) * l_u}


@hookimpl
def ssl_bench_methods():
    return [MixUpBaseline]
