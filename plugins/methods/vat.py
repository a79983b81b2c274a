"""Virtual adversarial training (Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial Training: A
Regularization Method for Supervised and Semi-Supervised Learning", IEEE TPAMI 2018; arXiv
1704.03976): §3, Algorithm 1, and the entropy-minimised variant "VAT+EntMin" of §4.

Each step, with a labeled batch (x_l, y_l) and an unlabeled batch x (N images of C x H x W):

1. p = p(y | x, theta^) = softmax(f(x)), held constant (no gradient): theta^ of eq. (5)
2. d ~ N(0, I) per sample, from the run's generator (a random unit direction once normalised)
3. repeat K times (``power_iterations``; the power method on the Hessian H of eq. (9), with the
   finite difference of eqs. (12)-(13)):
       d <- xi d / ||d||_2
       g = grad_d D[p, p(y | x + d, theta^)],   D = KL divergence
       d <- g
4. r_vadv = eps g / ||g||_2                                                   (eq. (14))
5. LDS(x, theta) = D[p, p(y | x + r_vadv, theta)], averaged over the batch    (eqs. (5), (7))
6. minimise L = CE(x_l, y_l) + alpha * mean LDS                               (eq. (8))
   VAT+EntMin adds the conditional entropy of the unlabeled predictions,
   H(Y | X) = -mean_x sum_y p(y | x) log p(y | x) (``entmin = true``), with weight 1 (the
   paper's; ``entmin_weight``: the MixMatch code's VAT baseline uses 0.06).

||.||_2 is per sample, over all of C, H, W; the mean over the batch in D scales every sample's
g alike, which the normalisation removes. r_vadv is a constant in step 5 (no gradient through
the power iteration), and the gradient of LDS flows only through p(y | x + r_vadv, theta): the
clean prediction of step 1 is the target. With no unlabeled data only the cross-entropy is
active.

Hyperparameters and where their defaults come from (official code: github.com/takerum/vat_tf,
``vat.py``, ``train_semisup.py``, README):

- ``eps`` = 8.0: the code's default (``epsilon``) and its README's value for CIFAR-10 with
  flip + translation augmentation (VAT and VAT+EntMin). The README's other settings: CIFAR-10
  without augmentation 10.0; SVHN 2.5 without and 3.5 with translation. (Not 6.0: 6.0 is the
  VAT baseline of the MixMatch code, github.com/google-research/mixmatch ``vat.py``, which USB
  copies.) eps is an L2 radius in the network's input space, so it depends on the input's
  normalisation (vat_tf: ZCA-whitened CIFAR-10) and on the number of pixels: tune it per data
  set (an 8 x 8 digit normalised to unit variance has norm ~8 in all, so 8.0 there is a
  perturbation as large as the image).
- ``xi`` = 1e-6: the code's ``xi`` (the value the paper reports using). In float32 the step
  x + xi d is at or below the rounding of the inputs for many pixels, so the finite
  difference is partly rounding noise, as in the official code; the result still lies in the
  span of the rows of the network's input Jacobian (g = J^T (p(x + xi d) - p)), which is what
  the method needs. A larger xi (reimplementations use 1e-2 to 10) trades that for a cruder
  approximation of H d.
- ``power_iterations`` K = 1: the code's ``num_power_iterations``; the paper reports one
  iteration to be enough.
- ``weight`` alpha = 1: the code adds the VAT loss with weight 1 (``loss = nll_loss +
  vat_loss``; its ``balance_factor`` flag is never used), and the entropy with weight 1 too.

Choices where the paper is silent, from the official code (read, not copied):

- d starts as a standard normal draw per pixel (``tf.random_normal``).
- Normalisation as the code's ``get_normalized_vector``: first divide by the per-sample max |d|
  (keeps tiny gradients away from underflow), then by the per-sample L2 norm. The code adds
  1e-6 inside that square root; here the norm is exact (the max-scaled vector has norm >= 1,
  so the code's epsilon changes it by < 1e-6 relative), and an all-zero d (no gradient) stays
  zero: r_vadv = 0 for that sample, not NaN.
- Batch norm: the code builds the clean unlabeled pass, the power-iteration passes and the
  adversarial pass with ``update_batch_stats=False`` (normalised by the batch's own statistics,
  running averages untouched); only the labeled pass updates them. Here the same: during the
  unlabeled passes every batch-norm layer runs with ``track_running_stats`` off (batch
  statistics, no update of the running mean/var or the batch counter), restored afterwards.
  Networks without batch norm (``lba_convnet``) are unaffected.
- The LDS covers the unlabeled batch (``ul_x`` in the code). Eq. (7) averages over labeled and
  unlabeled inputs; the code's unlabeled set is the whole training set (labeled images
  included), which is this suite's ``unlabeled_overlap = true`` with ``n_unlabeled = "all"``.
- KL direction KL(p(x) || p(x + r)) (the code's ``kl_divergence_with_logit(logit_p, logit_m)``),
  from log-softmax (exact for saturated predictions). The entropy term uses the clean logits with
  their gradient (the code's ``entropy_y_x(ul_logit)``).
- The cross-entropy uses the plain labeled batch (the protocol's view); the code's augmentation
  is the protocol's ``augment``. Optimiser (Adam, lr 0.001, beta1 0.9 -> 0.5 and linear lr decay
  at the end), batches of 32 labeled and 128 unlabeled images and the conv-large network are
  protocol choices of the grid, not of the method.
- Random numbers are drawn inside the loss, so VAT runs train one by one, not packed.

USB (microsoft/Semi-supervised-learning, ``semilearn/algorithms/vat/vat.py``) differs: eps = 6
(from the MixMatch code's baseline), the VAT loss ramped up linearly over the first 40% of
training (``unsup_warm_up = 0.4``) times ``lambda_u``, the entropy term always on with weight
0.06 (``ent_loss_ratio``) instead of the VAT / VAT+EntMin choice with weight 1, d drawn on the
CPU from torch's global RNG and normalised without the max-abs prescaling (``+ 1e-16``), a
``backward()`` then ``model.zero_grad()`` for the power iteration instead of a gradient with
respect to d alone; like here it freezes batch-norm statistics for the unlabeled passes, uses
xi = 1e-6, K = 1 and KL(p(x) || p(x + r)).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import Method, hookimpl, hyperparameter
from ssl_bench_plugins.methods.entmin import mean_entropy


@contextlib.contextmanager
def batchnorm_statistics_frozen(model: nn.Module):
    """Inside: batch-norm layers in training mode normalise by the batch's statistics but do not
    update their running averages (nor ``num_batches_tracked``): the official code's
    ``update_batch_stats=False``. In eval mode they use the running averages, as always."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


def kl_with_logits(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_i KL(softmax(target_i) || softmax(logits_i)) = mean_i sum_y q (log q - log p)."""
    log_q = F.log_softmax(target_logits, dim=1)
    return (log_q.exp() * (log_q - F.log_softmax(logits, dim=1))).sum(1).mean()


def unit_vectors(d: torch.Tensor) -> torch.Tensor:
    """d / ||d||_2 per sample (norm over all dims but the first), after dividing by the
    per-sample max |d| as the official code; an all-zero sample stays zero."""
    dims = tuple(range(1, d.dim()))
    scale = d.abs().amax(dim=dims, keepdim=True)
    d = d / torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = d.pow(2).sum(dim=dims, keepdim=True).sqrt()
    return d / torch.where(norm > 0, norm, torch.ones_like(norm))


def virtual_adversarial_perturbation(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, xi: float,
                                     eps: float, iterations: int, generator: torch.Generator | None) -> torch.Tensor:
    """r_vadv of eq. (14) by ``iterations`` power iterations (eqs. (12)-(13)) from d ~ N(0, I)
    drawn from ``generator``; ``logits`` are f(x) (the target p, detached here). Returns a
    constant (detached) perturbation of x's shape with per-sample L2 norm eps."""
    target = logits.detach()
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with torch.enable_grad():
        for _ in range(iterations):
            d = (xi * unit_vectors(d)).requires_grad_()
            distance = kl_with_logits(target, model(x + d))
            (d,) = torch.autograd.grad(distance, [d])
    return eps * unit_vectors(d.detach())


class VirtualAdversarialTraining(Method):
    """Cross-entropy + alpha * KL(p(y|x) || p(y|x + r_vadv)) on unlabeled data (Miyato et al.
    2018), optionally + the conditional entropy (VAT+EntMin)."""

    name = "vat"
    weight: float = hyperparameter(1.0, ge=0, help="alpha of eq. (8): weight of the LDS term (official code: 1)")
    eps: float = hyperparameter(8.0, ge=0, help="epsilon: L2 norm of r_vadv per sample (vat_tf default and CIFAR-10 "
                                                "+ augmentation; README: CIFAR-10 10.0 without augmentation, SVHN 2.5 "
                                                "/ 3.5 with translation); depends on the input normalisation")
    xi: float = hyperparameter(1e-6, gt=0, help="xi: finite-difference step of the power iteration (paper and code)")
    power_iterations: int = hyperparameter(1, ge=1, help="K: power iterations for r_vadv (paper and code: 1)")
    entmin: bool = hyperparameter(False, help="VAT+EntMin: add the conditional entropy of p(y|x_u)")
    entmin_weight: float = hyperparameter(1.0, ge=0, since="0.2", help="weight of the entropy term when entmin = "
                                          "true (paper: 1; the MixMatch code's VAT baseline: 0.06)")

    def loss_terms(self, batch, model, ctx):
        terms = {}
        if batch.x_labeled is not None:
            terms["classification"] = F.cross_entropy(model(batch.x_labeled), batch.y_labeled)
        x = batch.x_unlabeled
        if x is None:
            return terms
        with batchnorm_statistics_frozen(model):
            logits = model(x)
            r_vadv = virtual_adversarial_perturbation(model, x, logits, self.xi, self.eps,
                                                      self.power_iterations, ctx.generator)
            logits_adversarial = model(x + r_vadv)
        terms["vat"] = self.weight * kl_with_logits(logits.detach(), logits_adversarial)
        if self.entmin:
            terms["entropy"] = self.entmin_weight * mean_entropy(logits)
        return terms


@hookimpl
def ssl_bench_methods():
    return [VirtualAdversarialTraining]
