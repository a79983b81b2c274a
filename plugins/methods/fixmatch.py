"""FixMatch (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020): Algorithm 1, eqs. 1-4.

Each step, with a labeled batch (x_b, p_b), b = 1..B, and an unlabeled batch u_b, b = 1..mu B,
of which the core draws the views (``views``; the same sampled images, each view with its own
random draws): alpha = weak (flip + translate), A = strong (RandAugment + Cutout):

1. one forward pass over the concatenation [alpha(x); alpha(u); A(u)] (as the official code,
   below), split back into the three parts
2. L_s = (1/B) sum_b H(p_b, p_m(y | alpha(x_b)))                         (eq. 2: weak labeled view)
3. q_b = softmax(p_m(y | alpha(u_b))), no gradient; q^_b = argmax q_b    (eq. 3: hard pseudo-label)
4. L_u = (1/(mu B)) sum_b 1(max q_b >= tau) H(q^_b, p_m(y | A(u_b)))     (eq. 4)
5. minimise L = L_s + lambda_u L_u                                       (§2.2; Algorithm 1)

With no unlabeled data (n_unlabeled = 0) only L_s is active (one forward pass of the labeled view).

Hyperparameters and where their defaults come from:

- ``threshold`` tau = 0.95: the paper (§4.1, the one set of hyperparameters for all data sets
  but ImageNet: lambda_u = 1, eta = 0.03, beta = 0.9, tau = 0.95, mu = 7, B = 64) and the official
  code (``flags.DEFINE_float('confidence', 0.95, ...)``, github.com/google-research/fixmatch,
  ``fixmatch.py``). Any value >= 0; tau > 1 masks every sample (L_u = 0), tau = 0 none.
- ``weight`` lambda_u = 1: the paper (§4.1) and the code (``flags.DEFINE_float('wu', 1, ...)``).

What is protocol, not method (set in the grid, the same for every method of a comparison):

- mu, the unlabeled ratio (paper: 7), is ``unlabeled_batch`` / labeled batch size; B (paper:
  64) is the labeled batch, e.g. ``sampler = "uniform"`` with ``labeled_batch = 64`` (the code
  draws the labeled batch uniformly from a shuffled repeat of the labeled set, not class-balanced)
  and ``unlabeled_batch = 448``. mu is not a hyperparameter here: L_u is normalised by the
  unlabeled batch it is given, whatever its size.
- The evaluated network is an EMA of the weights with decay 0.999 (the code's ``ema=0.999``):
  protocol ``ema_decay = 0.999``, an engine feature (it packs); the loss does not use the EMA.
- SGD with Nesterov momentum 0.9, lr 0.03, cosine decay lr cos(7 pi k / (16 K)): ``optimizer =
  "sgd"``, ``lr = 0.03``, ``[base.optim] nesterov = true, schedule = "cosine", cosine_fraction =
  0.4375``. Weight decay 5e-4 (CIFAR-10; 1e-3 for CIFAR-100) is the code's ``wd * sum
  tf.nn.l2_loss(kernel)``, i.e. the protocol's default ``weight_decay_style = "l2_loss"`` with
  ``weight_decay = 0.0005`` (an L2 term in the loss, not decoupled decay).
- Weak and strong augmentation are the ``weak`` / ``strong`` pipelines (plugins/augment/pipelines.py,
  which documents its deviations from the code's RandAugment); a data set may define its own
  ``weak`` (digits, SVHN: no horizontal flip). The labeled batch is also seen weakly augmented
  (the code's ``augment='d.d.d'``), so the plain ``batch.x_labeled`` is not used.

Choices, where the paper leaves room:

- L_u is the mean over the whole unlabeled batch of mask * CE (eq. 4's 1/(mu B) and the code's
  ``reduce_mean(loss_xeu * pseudo_mask)``), not the mean over the masked samples: a step where
  few samples pass the threshold has a small L_u, by design.
- The mask is ``max q >= tau``, as in eq. 4 and the code (``>= confidence``); Algorithm 1 prints
  ">", which differs only when max q equals tau exactly.
- One forward pass over [labeled weak; unlabeled weak; unlabeled strong], in that order, as the
  official code (``classifier(tf.concat([xt_in, y_in[:, 0], y_in[:, 1]], 0), training=True)``):
  a network with batch norm normalises, and updates its running statistics, with the statistics
  of the whole concatenated batch (on one device; the code splits it across GPUs), not per part.
  The backbones without batch norm (``lba_convnet``) are unaffected.
- The pseudo-label is computed from the weak view's logits in float32 (q is detached), so the
  threshold is compared at full precision under bf16 autocast.
- Only hard pseudo-labels (the paper's main variant); the soft/sharpened variant (``temperature``,
  §5.2 ablation) is not implemented.
- Monitored (``Method.monitored``: recorded in the curve's loss terms, never added to the loss):
  ``mask_rate``, the fraction of the unlabeled batch whose pseudo-label passes the threshold (the
  code's ``monitors/mask``). The pseudo-labels' accuracy is not reported (the loss never sees the
  true labels of unlabeled images).
- No hooks and no randomness inside the loss (the views are drawn by the core from the run's
  generator), so FixMatch runs pack.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter


def pseudo_labels(logits_weak: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 and the indicator of eq. 4: hard labels argmax q and the float mask max q >= tau of
    q = softmax(logits_weak), detached (no gradient flows through the pseudo-label)."""
    q = logits_weak.detach().float().softmax(1)
    confidence, labels = q.max(1)
    return labels, (confidence >= threshold).float()


def unlabeled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 4: mean over the unlabeled batch (1/(mu B), not over the masked samples) of
    1(max q >= tau) * CE(logits_strong, argmax q)."""
    labels, mask = pseudo_labels(logits_weak, threshold)
    return (F.cross_entropy(logits_strong, labels, reduction="none") * mask).mean()


class FixMatch(Method):
    """Cross-entropy of the weak labeled view + lambda_u * thresholded hard pseudo-label
    cross-entropy of the strong unlabeled view against the weak one (Sohn et al. 2020)."""

    name = "fixmatch"
    views = {"labeled": ("weak",), "unlabeled": ("weak", "strong")}
    monitored = ("mask_rate",)
    threshold: float = hyperparameter(0.95, ge=0, help="tau: confidence threshold of the pseudo-labels (eq. 4); "
                                                       "the paper and code use 0.95")
    weight: float = hyperparameter(1.0, ge=0, help="lambda_u: weight of the unlabeled loss; the paper uses 1")

    def loss_terms(self, batch, model, ctx):
        if batch.y_labeled is None:
            raise UserError("fixmatch needs labeled samples (its supervised loss); this run's task gives none")
        (labeled,) = batch.views["labeled"]
        unlabeled = batch.views.get("unlabeled")
        if not unlabeled:  # n_unlabeled = 0: the supervised loss alone
            return {"classification": F.cross_entropy(model(labeled), batch.y_labeled)}
        weak, strong = unlabeled
        b, n = labeled.shape[0], weak.shape[0]
        logits = model(torch.cat([labeled, weak, strong]))  # one pass: batch norm sees the whole batch
        logits_labeled, logits_weak, logits_strong = logits.split([b, n, n])
        return {
            "classification": F.cross_entropy(logits_labeled, batch.y_labeled),
            "consistency": self.weight * unlabeled_loss(logits_weak, logits_strong, self.threshold),
            "mask_rate": pseudo_labels(logits_weak, self.threshold)[1].mean(),
        }


@hookimpl
def ssl_bench_methods():
    return [FixMatch]
