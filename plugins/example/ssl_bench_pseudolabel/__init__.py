"""Pseudo-Label (D.-H. Lee, "Pseudo-Label: the simple and efficient semi-supervised learning
method for deep neural networks", ICML 2013 workshop), as a third-party ssl-bench plugin.

Each step:
1. L_labeled: cross-entropy of the labeled batch (eq. 15, first sum)
2. pseudo-labels: the class of maximum predicted probability of each unlabeled sample,
   recomputed every step and treated as constant (eq. 1)
3. L_unlabeled: cross-entropy of the unlabeled batch against its pseudo-labels
4. L = L_labeled + alpha(t) * L_unlabeled, with the deterministic-annealing ramp of eq. 16:
   alpha(t) = 0 for t < T1, alpha_f * (t - T1) / (T2 - T1) for T1 <= t < T2, alpha_f after.

Lee counts t in epochs (T1 = 100, T2 = 600, alpha_f = 3); here t is the optimiser step and T1,
T2 are parameters, so a grid can scale the ramp to its run length. The ramp is schedule state
the method owns: it reads ``ctx.step`` and the loop is untouched.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter


class PseudoLabel(Method):
    """Pseudo-Label (Lee 2013): cross-entropy on arg-max pseudo-labels, weight ramped up (eq. 16)."""

    name = "pseudo_label"
    alpha_final: float = hyperparameter(3.0, ge=0, help="alpha_f of eq. 16")
    ramp_start: int = hyperparameter(100, ge=0, help="T1: step at which alpha starts to rise")
    ramp_end: int = hyperparameter(600, ge=1, help="T2: step at which alpha reaches alpha_f")

    def alpha(self, step: int) -> float:
        if step < self.ramp_start:
            return 0.0
        if step >= self.ramp_end:
            return self.alpha_final
        return self.alpha_final * (step - self.ramp_start) / max(self.ramp_end - self.ramp_start, 1)

    def loss_terms(self, batch, model, ctx):
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if batch.x_unlabeled is not None:
            logits = model(batch.x_unlabeled)
            pseudo = logits.detach().argmax(1)
            terms["pseudo_label"] = self.alpha(ctx.step) * F.cross_entropy(logits, pseudo)
        return terms


@hookimpl
def ssl_bench_methods():
    return [PseudoLabel]


@hookimpl
def ssl_bench_grids():
    return [Path(__file__).with_name("pseudolabel_digits.toml")]
