"""Mean Teacher (Tarvainen & Valpola, "Mean teachers are better role models: weight-averaged
consistency targets improve semi-supervised deep learning results", NeurIPS 2017, §2): the
consistency target comes from a teacher whose weights are an exponential moving average of the
student's.

Each step t, with a labeled batch (x_L, y_L), an unlabeled batch B of n images in C classes,
student weights theta and teacher weights theta':

1. student: f(g(x_i), theta), teacher: f(g'(x_i), theta') for i in B, on two independent random
   augmentations (the views ``("weak", "weak")``; the paper's noise eta and eta')
2. L_sup = mean softmax cross-entropy of f(x_L, theta) against y_L
3. L_cons = 1 / (C n) * sum_i ||softmax f(g(x_i), theta) - softmax f(g'(x_i), theta')||^2, the
   teacher's output a constant (eq. 1, J(theta), with the squared error as the distance)
4. w(t) = consistency_weight * exp(-5 (1 - T)^2), T = min(t / ramp_up, 1) (``ramps.sigmoid_rampup``)
5. minimise L = L_sup + w(t) L_cons over theta
6. theta' <- alpha theta' + (1 - alpha) theta (eq. 2)

Step 6 is the engine's: the protocol key ``ema_decay`` (alpha, > 0) makes it keep the EMA of
the weights, update it after every optimiser step, evaluate it (the paper reports the teacher)
and hand it to the loss as ``ctx.ema_model``. Without ``ema_decay`` there is no teacher and the
loss raises a ValueError that says so. Because the teacher is the engine's, the method has no
hooks and its runs pack. With no unlabeled data only L_sup is active (the teacher still is what
gets evaluated).

Choices where the paper is silent, and its settings, from the authors' code
(github.com/CuriousAI/mean-teacher: TensorFlow ``mean_teacher/model.py``, the paper's SVHN and
CIFAR-10 runs; PyTorch ``pytorch/main.py``, ``losses.py``, ``ramps.py``):

- ``ema_decay`` is set by the grid. The paper (Appendix B) and the TensorFlow code use 0.99
  during the ramp-up and 0.999 after it (``ema_decay_during_rampup``/``_after_rampup``); the
  engine's decay is constant, so a grid picks 0.99 for short runs or 0.999 for long ones. The
  engine's EMA starts at the initial weights with the full decay; the PyTorch code uses the
  true average for the first 1 / (1 - alpha) steps (alpha_t = min(1 - 1 / (t + 1), alpha)).
  The ramp keeps w(t) small while the teacher is still near the initialisation.
- The teacher runs in training mode, as in both codes (``ema_model.train()``; the TensorFlow
  teacher tower is built with ``is_training``): batch norm uses batch statistics and dropout is
  on. Its output gets no gradient (``tf.stop_gradient`` / a detached ``ema_logit``).
- Normalisation: the mean over samples and classes. The PyTorch ``softmax_mse_loss`` sums the
  squared differences over classes and samples and divides by the number of classes, then
  the caller divides by the minibatch size; the TensorFlow ``consistency_costs`` takes the mean
  over classes, then over the minibatch. Both are 1 / (C n) sum_i ||.||^2, as here.
- The consistency covers the unlabeled batch. Both codes apply it to every sample of the
  minibatch, labeled ones included (``apply_consistency_to_labeled = True``); here the labeled
  images are in the unlabeled pool with ``unlabeled_overlap = true`` (the default), at their
  natural share rather than the share of the code's labeled stream.
- ``consistency_weight`` = 100: the TensorFlow ``max_consistency_coefficient`` and the PyTorch
  CIFAR-10 setting. Both codes divide the cross-entropy by the whole minibatch (labeled and
  unlabeled), i.e. r times a mean over labeled samples with r the labeled share of a minibatch;
  here L_sup is that mean, so the code's exact balance is consistency_weight = 100 / r (r =
  31/128 in the PyTorch CIFAR-10 runs: about 413).
- ``ramp_up`` = 40000 steps: the TensorFlow ``rampup_length`` (the PyTorch CIFAR-10 runs ramp over
  5 epochs). The ramp is evaluated at every step.
- Augmentation, the labeled batch and separate forward passes as in pi_model.py: ``weak`` views
  (translation, plus a flip where the data set allows it; the paper translates by up to 2 px,
  flips on CIFAR-10 only and adds Gaussian input noise), the protocol's labeled view. The
  PyTorch code's second head (``logit_distance_cost``) is not part of the method here.

USB (microsoft/Semi-supervised-learning, ``semilearn/algorithms/meanteacher``) differs: its
teacher is its evaluation EMA (``ema_m`` = 0.999) swapped into the network under ``no_grad``
with batch-norm statistics frozen, its weight ramps linearly over the first 40% of training
(``unsup_warm_up = 0.4``) with ``lambda_u`` = 50 in its classic-CV configs, the consistency
covers the unlabeled batch only and the labeled batch is augmented (flip + crop); its MSE is the
same mean over classes and samples, on two weak views, as here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter
from ssl_bench_plugins.methods.ramps import sigmoid_rampup

NO_TEACHER = ("mean_teacher needs a teacher: set the protocol key ema_decay > 0 in the grid (the engine then keeps "
              "the EMA of the weights and hands it to the loss as ctx.ema_model); the paper uses ema_decay = 0.99 "
              "during the ramp-up and 0.999 after it")


class MeanTeacher(Method):
    """Cross-entropy + w(t) * squared difference to the EMA teacher's softmax (Tarvainen & Valpola 2017)."""

    name = "mean_teacher"
    needs_ema = True
    views = {"unlabeled": ("weak", "weak")}
    consistency_weight: float = hyperparameter(100.0, ge=0, help="the consistency weight after the ramp-up "
                                                                 "(paper/code: 100)")
    ramp_up: int = hyperparameter(40000, ge=0, help="steps of the sigmoid-shaped ramp-up exp(-5 (1 - T)^2) of the "
                                                    "consistency weight (paper: 40000); 0: none")

    def loss_terms(self, batch, model, ctx):
        teacher = ctx.ema_model
        if teacher is None:
            raise ValueError(NO_TEACHER)
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if batch.x_unlabeled is not None:
            student_view, teacher_view = batch.views["unlabeled"]
            with torch.no_grad():
                target = teacher(teacher_view).softmax(1)
            w = self.consistency_weight * sigmoid_rampup(ctx.step, self.ramp_up)
            terms["consistency"] = w * F.mse_loss(model(student_view).softmax(1), target.detach())
        return terms


@hookimpl
def ssl_bench_methods():
    return [MeanTeacher]
