"""Temporal ensembling (Laine & Aila, "Temporal ensembling for semi-supervised learning",
ICLR 2017, §2.2, Algorithm 2): the target for each unlabeled image is an exponential moving
average of the network's own past predictions of it, so one evaluation per step suffices.

State: Z, one C-vector per image of the unlabeled pool (zeros at the start), and t_i, how many
predictions of image i Z holds. Each step t, with a labeled batch (x_L, y_L) and an unlabeled
batch B of n images:

1. z_i = f(g(x_i)) for i in B: one evaluation on a random augmentation (the view ``"weak"``)
2. z~_i = Z_i / (1 - alpha^t_i): the bias-corrected ensemble target (Algorithm 2's
   z~ <- Z / (1 - alpha^t)); for an image not yet predicted (t_i = 0) there is none
3. L_sup = mean softmax cross-entropy of f(x_L) against y_L
4. L_cons = 1 / (C n) * sum_{i in B, t_i > 0} ||z_i - z~_i||^2 (z~ a constant)
5. w(t) = weight * exp(-5 (1 - T)^2), T = min(t / ramp_up, 1) (``ramps.sigmoid_rampup``)
6. minimise L = L_sup + w(t) L_cons
7. after the update: Z_i <- alpha Z_i + (1 - alpha) z_i and t_i <- t_i + 1 for i in B

With no unlabeled data only L_sup is active.

Where this departs from the paper, and choices where it is silent, settled with the authors' code
(github.com/smlaine2/tempens, ``train.py`` and ``config.py``):

- Z is updated every step, for the images of the batch, not once per epoch for all of them: the
  loop samples unlabeled images with replacement, so there are no epochs. t is counted per
  image (its number of updates), which makes the bias correction exact per image: after one
  update z~ is that prediction itself, after two (alpha z_1 + z_2) / (1 + alpha). The paper's t
  is the epoch, the same for every image, because each image is predicted once per epoch. An
  image drawn twice in one batch gets two updates, in batch order. The ensemble therefore
  spans an image's last few visits (about 1 / (1 - alpha) of them), as the paper's spans epochs.
- Images with no prediction yet (t_i = 0) have no target and add nothing to L_cons, which is
  still divided by the whole batch: the code sets the unsupervised weight to 0 for the first
  epoch, when the targets are the initial zeros; this is the per-image version of that.
- z_i is the softmax output of the training pass itself (with augmentation, and dropout if the
  backbone has it), as the code gathers ``train_prediction``; it is accumulated after the step
  (in ``on_step_end``), so a step's targets never contain that step's own prediction.
- Z covers the unlabeled pool only; with ``unlabeled_overlap = true`` (the default) the labeled
  images are in the pool and get targets too, as in the paper, where Z covers all inputs.
- ``weight`` = 30: the code's ``unsup_weight_max`` for temporal ensembling (SVHN and
  CIFAR-10; 100 is the Π-model's). As for the Π-model (pi_model.py), the code's extra M/N
  factor only compensates its cross-entropy normalisation (summed over the labeled members of
  a mixed minibatch, divided by its size); with L_sup a mean over a labeled batch the same
  balance is w_max unscaled. ``alpha`` = 0.6: the code's ``prediction_decay`` (the paper's
  alpha). ``ramp_up`` = 40000 steps: 80 epochs of 500 minibatches of 100 on CIFAR-10.
- Augmentation, the labeled batch and the normalisation 1 / (C n) as in pi_model.py: ``weak``
  (translation, plus a flip where the data set allows it), the protocol's labeled view, the
  mean over samples and classes.

The state lives on the method (tensors the size of the unlabeled pool, made in
``on_train_start``), so runs of this method train one by one, never packed. ``diagnostics``
adds ``ensemble_coverage`` to the curve: the share (%) of the pool that has a target.

USB (microsoft/Semi-supervised-learning) has no temporal ensembling. Compared with its Π-model,
the closest method there, this replaces the second, detached view by the ensemble target (one
forward pass of the unlabeled batch instead of two) and ramps its weight along the Gaussian
curve instead of linearly over 40% of training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.methods.ramps import sigmoid_rampup


class TemporalEnsembling(Method):
    """Cross-entropy + w(t) * squared difference to a per-image EMA of past predictions (Algorithm 2)."""

    name = "temporal_ensembling"
    views = {"unlabeled": ("weak",)}
    weight: float = hyperparameter(30.0, ge=0, help="w_max, the consistency weight after the ramp-up "
                                                    "(tempens code: 30 for temporal ensembling)")
    ramp_up: int = hyperparameter(40000, ge=0, help="steps of the Gaussian ramp-up exp(-5 (1 - T)^2) of w(t) "
                                                    "(paper: 80 epochs, 40000 steps on CIFAR-10); 0: none")
    alpha: float = hyperparameter(0.6, ge=0, help="ensemble momentum: Z <- alpha Z + (1 - alpha) z (paper: 0.6); < 1")

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.alpha >= 1:
            raise UserError(f"methods.{self.name}.alpha must be below 1 (the ensemble would never take in a "
                            f"prediction), got {self.alpha}")
        self.ensemble: torch.Tensor | None = None  # Z: pool size x C
        self.updates: torch.Tensor | None = None  # t_i: predictions accumulated per image
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's (indices, z)

    # ---------------------------------------------------------------- the ensemble
    def reset(self, pool_size: int, num_classes: int, device) -> None:
        """Z = 0 and t = 0 for every image of the pool."""
        self.ensemble = torch.zeros(pool_size, num_classes, device=device)
        self.updates = torch.zeros(pool_size, dtype=torch.int64, device=device)
        self.pending = None

    def targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z~ = Z / (1 - alpha^t) for the images ``idx``, and which of them have one (t > 0);
        rows without one are zeros."""
        t = self.updates[idx]
        seen = t > 0
        correction = 1.0 - torch.pow(torch.tensor(self.alpha, device=t.device), t.float())
        target = self.ensemble[idx] / torch.where(seen, correction, torch.ones_like(correction))[:, None]
        return target * seen[:, None], seen

    @torch.no_grad()
    def accumulate(self, idx: torch.Tensor, z: torch.Tensor) -> None:
        """Z_i <- alpha Z_i + (1 - alpha) z_i, t_i <- t_i + 1, once per occurrence of i in ``idx``
        in order: an image drawn m times ends at alpha^m Z + (1 - alpha) sum_r alpha^(m-1-r) z_r."""
        alpha = self.alpha
        unique, inverse, counts = torch.unique(idx, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)  # occurrences grouped by image, in batch order
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(inverse)
        rank[order] = torch.arange(len(idx), device=idx.device) - first[inverse[order]]
        later = (counts[inverse] - 1 - rank).float()  # updates after this one, within the batch
        weights = (1.0 - alpha) * torch.pow(torch.tensor(alpha, device=idx.device), later)
        added = torch.zeros(len(unique), z.shape[1], device=z.device)
        added.index_add_(0, inverse, weights[:, None] * z.float())
        decay = torch.pow(torch.tensor(alpha, device=idx.device), counts.float())[:, None]
        self.ensemble[unique] = decay * self.ensemble[unique] + added
        self.updates[unique] += counts

    # ---------------------------------------------------------------- the method
    def on_train_start(self, model, ctx):
        self.reset(len(ctx.data.unlabeled_x), ctx.num_classes, ctx.device)

    def loss_terms(self, batch, model, ctx):
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if batch.x_unlabeled is not None:
            (view,) = batch.views["unlabeled"]
            z = model(view).softmax(1)
            target, seen = self.targets(batch.idx_unlabeled)
            squared = ((z - target) ** 2).sum(1) * seen
            w = self.weight * sigmoid_rampup(ctx.step, self.ramp_up)
            terms["consistency"] = w * squared.sum() / z.numel()
            self.pending = (batch.idx_unlabeled, z.detach())
        return terms

    def on_step_end(self, model, ctx):
        if self.pending is not None:
            self.accumulate(*self.pending)
            self.pending = None

    def diagnostics(self, model, ctx):
        return {"ensemble_coverage": 100.0 * (self.updates > 0).float().mean()}


@hookimpl
def ssl_bench_methods():
    return [TemporalEnsembling]
