"""Associative domain adaptation (Haeusser, Frerix, Mordvintsev, Cremers, "Associative Domain
Adaptation", ICCV 2017; the dissertation's chapter 4): LbA's association between the labeled
SOURCE batch and an unlabeled TARGET batch (``task = "domain_adaptation"`` draws the unlabeled
batch from the target data set).

Each step, with a class-balanced source batch (x_s, y_s) and a uniform target batch x_t:

1. embed both with the same network: A = phi(x_s), B = phi(x_t) (two forward passes, as LbA)
2. associate A with B (eqs. 1-3 of LbA: P^ab, P^ba, P^aba; plugins/methods/association.py)
3. L_assoc = b1 L_walker + b2 L_visit                              (walker eq. 4, visit eq. 5)
4. minimise L = L_classification + alpha(step) L_assoc, alpha = ``weight`` from step ``delay``
   on and 0 before it (the dissertation's step function: the network first learns the source
   classes, then the domains are associated)

With no target data (n_unlabeled = 0) it is source-only training. Source-only and target-only
runs are grid cells (n_unlabeled = 0; task "ssl" on the target), not methods.

Hyperparameters: ``visit_weight`` b2 is the one the dissertation chooses per pair (lower it when
the domains' class distributions differ); the fixed-parameter row of Table 2 uses b2 = 0.5 and a
delay of 500 steps (the defaults here); b1 = 1 and alpha = 1. The authors' code
(github.com/haeusser/learning_by_association, semisup/train.py, read) has walker weight 1,
``--visit_weight``, and optional envelopes (none, sigmoid or linear growth over
``--*_envelope_steps`` after ``--*_envelope_delay``; with no envelope the weight is constant from
step 0); its README's tuned values: visit 0.1-0.6, delays 0/500/2000. The dissertation's step
function is what is here.
"""
from __future__ import annotations

from ssl_bench import hookimpl, hyperparameter
from ssl_bench_plugins.methods.lba import LearningByAssociation
from ssl_bench_plugins.methods.ramps import step_after


class AssociativeDomainAdaptation(LearningByAssociation):
    """Classification on the source + alpha(step) (b1 walker + b2 visit) between source and target (ADA, ch. 4)."""

    name = "assoc_da"
    # LbA's losses and knobs (walker_weight b1, log_epsilon), with the chapter's b2 default and schedule
    visit_weight: float = hyperparameter(0.5, ge=0, help="b2: weight of L_visit (Table 2 fixed parameters: 0.5; "
                                                         "authors' README: 0.1-0.6)")
    weight: float = hyperparameter(1.0, ge=0, help="alpha after the delay (the step function's height)")
    delay: int = hyperparameter(500, ge=0, help="steps before the association losses switch on (Table 2 fixed "
                                                "parameters: 500)")

    def loss_terms(self, batch, model, ctx):
        terms = super().loss_terms(batch, model, ctx)  # classification, walker, visit (LbA eqs. 1-5)
        alpha = self.weight * step_after(ctx.step, self.delay)
        return {name: value if name == "classification" else alpha * value for name, value in terms.items()}


@hookimpl
def ssl_bench_methods():
    return [AssociativeDomainAdaptation]
