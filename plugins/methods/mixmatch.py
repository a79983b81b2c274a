"""MixMatch (Berthelot, Carlini, Goodfellow, Papernot, Oliver, Raffel, "MixMatch: A Holistic
Approach to Semi-Supervised Learning", NeurIPS 2019): Algorithm 1 and eqs. 2-11.

Each step, with a labeled batch X = ((x_b, p_b); b = 1..B) (p_b one-hot) and an unlabeled batch
U = (u_b; b = 1..N), hyperparameters T, K, alpha, lambda_U:

1. x^_b = Augment(x_b)                                  (line 3; the labeled ``weak`` view)
2. u^_b,k = Augment(u_b), k = 1..K                      (line 5; K ``weak`` views of each u_b)
3. q-_b = (1/K) sum_k p_model(y | u^_b,k; theta)        (line 7, eq. 6; no gradient)
4. q_b = Sharpen(q-_b, T), Sharpen(p, T)_i = p_i^(1/T) / sum_j p_j^(1/T)   (line 8, eq. 7)
5. X^ = ((x^_b, p_b)), U^ = ((u^_b,k, q_b)) for all b, k                    (lines 10-11)
6. W = Shuffle(Concat(X^, U^))                          (line 12; permutation from the run's generator)
7. X' = (MixUp(X^_i, W_i); i = 1..|X^|)                  (line 13)
   U' = (MixUp(U^_i, W_(i + |X^|)); i = 1..|U^|)        (line 14)
   MixUp: lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda),
          x' = lambda' x1 + (1 - lambda') x2, p' = lambda' p1 + (1 - lambda') p2   (eqs. 8-11)
8. L_X = (1/|X'|) sum_(x,p in X') H(p, p_model(y | x; theta))                (eq. 3)
   L_U = (1/(L |U'|)) sum_(u,q in U') ||q - p_model(y | u; theta)||_2^2      (eq. 4, L classes)
9. minimise L = L_X + lambda_U(t) L_U,  lambda_U(t) = lambda_U min(t / ramp_up, 1)   (eq. 5, §4)

L_U is the squared error summed over classes divided by the number of classes L (and averaged
over U'): the mean over samples and classes, as eq. 4's 1/(L|U'|) and the code's
``reduce_mean(square(labels_y - softmax(logits_y)))``. With no unlabeled data (n_unlabeled = 0)
Algorithm 1 runs with U empty: X' = MixUp(X^, Shuffle(X^)) and only L_X is active.

Hyperparameters and where their defaults come from (paper §4 and the official code,
github.com/google-research/mixmatch, ``mixmatch.py``, ``libml/layers.py``, ``runs/*.sh``):

- ``temperature`` T = 0.5 (paper; the code hard-codes ``T=0.5``).
- K = 2: the paper's value and the code's only one (``assert FLAGS.nu == 2``). K is the number
  of ``weak`` views in ``views`` (a class attribute of the method API), fixed at 2 here; a
  subclass with ``views = {"labeled": ("weak",), "unlabeled": ("weak",) * K}`` is MixMatch
  with that K (K = 1 is the paper's "no label averaging" ablation).
- ``alpha`` = 0.75: the paper's value and the code's runs for CIFAR-10, CIFAR-100, STL-10 and SVHN
  (``--beta=0.75``); 0.25 for SVHN+extra. (The code's flag default is 0.5.)
- ``lambda_u`` = 75: the code's runs for CIFAR-10 (``--w_match=75``); SVHN and SVHN+extra use 250,
  CIFAR-100 150, STL-10 50. The paper suggests 100 as a starting point for tuning.
- ``ramp_up`` = 16000 steps: the paper (§4: lambda_U ramped up linearly over the first 16,000
  steps). The code's ramp is over 1024 kimg (``warmup_kimg``), 16,384 steps of 64 images.
- ``lambda_per`` = "sample": one lambda per pair, as eq. 8 (MixUp of two examples) and the code
  (``MixMode.augment_pair`` draws ``Beta(beta, beta).sample([batch, 1, 1, 1])``). "batch" draws
  one lambda for the whole step, as the popular PyTorch reimplementation and USB.

Choices where the paper is silent, from the official code (read, not copied):

- Beta draws and the shuffle come from the run's generator (``mixing.beta_sample``: Gamma ratio
  by Marsaglia-Tsang; see ``mixing.py``), so a run is reproducible; random numbers inside the
  loss make MixMatch runs train one by one, not packed.
- The labeled batch is seen through its own ``weak`` view (the code augments it like the
  unlabeled ones), not the plain ``batch.x_labeled``. ``weak`` is flip + translate; data sets of
  symbols (digits, SVHN) define it as translation only, as the code's SVHN augmentation.
- Label guessing: one forward pass per view, without gradient, with batch-norm running
  statistics frozen (the code's guessing passes run in training mode, but their statistics
  updates are left out of the train op). The target q is a constant.
- The mixed batch goes through the network in one pass over Concat(X', U'): with batch norm it is
  normalised by the statistics of the whole mixed batch, which updates the running averages once.
  The code instead interleaves X' and U' into batches that each hold a share of both and updates
  the statistics from the first one only: an approximation of the same joint statistics needed
  for its multi-GPU batches. Interleaving is not done here (one device, one pass), and
  |U| need not equal |X| (the code's interleave needs equal batches).
- The cross-entropy against the soft targets is ``-sum_y p'_y log softmax(f(x'))_y``, averaged.
- Protocol, not method (set in the grid): the code trains with Adam (lr 0.002), batches of 64
  labeled and 64 unlabeled images, an EMA of the weights with decay 0.999 for evaluation
  (``ema_decay = 0.999``) and decoupled weight decay 0.02 x lr on the kernels (``optimizer =
  "adam"``, ``weight_decay = 0.02``, ``[base.optim] weight_decay_style = "decoupled"``).

USB (microsoft/Semi-supervised-learning, ``semilearn/algorithms/mixmatch/mixmatch.py``) differs:
one lambda per batch drawn with numpy's global RNG (``np.random.beta``) and the permutation
from torch's global RNG; ``mixup_alpha`` defaults to 0.5; lambda_U is ramped linearly over a
fraction of training (``unsup_warm_up`` = 1/64 of the iterations); it keeps the code's
interleaving with batch-norm statistics from the first interleaved batch only; like here it
guesses with frozen batch-norm statistics from two weak views, sharpens with T = 0.5, uses
lambda' = max(lambda, 1 - lambda) and the mean squared error over samples and classes.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.methods.mixing import mix, mixup_weights
from ssl_bench_plugins.methods.vat import batchnorm_statistics_frozen


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 7: p_i^(1/T) / sum_j p_j^(1/T), per row."""
    p = p.pow(1.0 / temperature)
    return p / p.sum(1, keepdim=True)


@torch.no_grad()
def guess_labels(model, views: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Lines 7-8: Sharpen(mean over the K views of softmax(f(u^_k)), T), without gradient."""
    mean = torch.stack([model(view).float().softmax(1) for view in views]).mean(0)
    return sharpen(mean, temperature)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean over rows of H(p, softmax(logits)) = -sum_y p_y log softmax(logits)_y."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def linear_rampup(step: float, length: float) -> float:
    """min(step / length, 1), clipped at 0; 1 when ``length`` is 0 (no ramp)."""
    if length <= 0:
        return 1.0
    return min(max(step / length, 0.0), 1.0)


class MixMatch(Method):
    """L_X + lambda_U(t) L_U on MixUp of labeled and guessed-label unlabeled data (Algorithm 1)."""

    name = "mixmatch"
    views = {"labeled": ("weak",), "unlabeled": ("weak", "weak")}  # K = 2
    temperature: float = hyperparameter(0.5, gt=0, help="T: sharpening temperature (eq. 7); paper and code 0.5")
    alpha: float = hyperparameter(0.75, ge=0, help="Beta(alpha, alpha) of MixUp (code runs: 0.75; 0.25 for "
                                                  "SVHN+extra); 0: no mixing")
    lambda_u: float = hyperparameter(75.0, ge=0, help="lambda_U: weight of L_U after the ramp-up (code runs: "
                                                      "CIFAR-10 75, SVHN 250, CIFAR-100 150, STL-10 50)")
    ramp_up: int = hyperparameter(16000, ge=0, help="steps of the linear ramp-up of lambda_U (paper: 16,000; "
                                                    "code: 16,384); 0: none")
    lambda_per: Literal["sample", "batch"] = hyperparameter(
        "sample", help="one MixUp lambda per example (eq. 8 and the official code) or one per batch (USB)")

    def guess(self, model, views: list[torch.Tensor], ctx) -> torch.Tensor:
        """Lines 7-8, with batch-norm statistics frozen; a subclass may guess with another
        network (LMCS: its master)."""
        with batchnorm_statistics_frozen(model):
            return guess_labels(model, views, self.temperature)

    def loss_terms(self, batch, model, ctx):
        if batch.y_labeled is None:
            raise UserError("mixmatch needs labeled samples (its L_X); this run's task gives none")
        (x_hat,) = batch.views["labeled"]
        p = F.one_hot(batch.y_labeled, ctx.num_classes).to(x_hat.dtype)
        unlabeled = batch.views.get("unlabeled") or []
        inputs, targets = [x_hat], [p]
        if unlabeled:
            q = self.guess(model, unlabeled, ctx).to(x_hat.dtype)
            inputs += unlabeled
            targets += [q] * len(unlabeled)
        all_x, all_p = torch.cat(inputs), torch.cat(targets)
        n, b = all_x.shape[0], x_hat.shape[0]
        perm = torch.randperm(n, generator=ctx.generator, device=all_x.device)  # W = Shuffle(Concat(X^, U^))
        lam = mixup_weights(self.alpha, n, ctx.generator, all_x.device, per_sample=self.lambda_per == "sample")
        mixed_x, mixed_p = mix(all_x, all_p, lam, perm)  # X' = rows :b, U' = rows b:
        logits = model(mixed_x)
        terms = {"classification": soft_cross_entropy(logits[:b], mixed_p[:b])}
        if unlabeled:
            l_u = F.mse_loss(logits[b:].float().softmax(1), mixed_p[b:].float())  # 1/(L |U'|) sum ||q - p||^2
            terms["consistency"] = self.lambda_u * linear_rampup(ctx.step, self.ramp_up) * l_u
        return terms


@hookimpl
def ssl_bench_methods():
    return [MixMatch]
