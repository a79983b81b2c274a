"""Snowball: iterative model evolution and confident sample discovery (seed 003, the
dissertation's chapter 2, §2.3), on a Mean Teacher student (``snowball``) or a MixMatch student
(``snowball_mixmatch``, §2.4 (4)).

Three networks: the student G_S (the trained one), the teacher G_T, an exponential moving
average of the student (the engine's EMA: protocol ``ema_decay``), and the master G_M, an
exponential moving average of the teacher (method-owned, frozen). Training is cut into
generations m = 1..M of iterations k = 1..K. Each step t of iteration (m, k):

1. G_T[t] = a G_T[t-1] + (1 - a) G_S[t], a ramping 0.99 -> 0.999                     (eq. 2.2)
   (protocol: ``ema_decay_early = 0.99`` for ``ema_early_steps``, then ``ema_decay = 0.999``)
2. G_M[t] = b G_M[t-1] + (1 - b) G_T[t], b = ``master_decay`` = 0.999                  (eq. 2.6)
3. J_C = cross-entropy of G_S on the current labeled set Omega_L^{m,k}                 (eq. 2.4)
4. J_theta = E_{x in Omega} ||softmax G_T(x) - softmax G_S(x)||^2
           + E_{x_l in Omega_L^{m,k}} ||softmax G_M(x_l) - softmax G_S(x_l)||^2        (eq. 2.7)
5. minimise J_S = l1 J_C + l2 J_theta over G_S                                         (eq. 2.3)

and at the start of each iteration (m, k), discovery (§2.3.3):

6. F = the discovery network's features (the embedding: the layer before the classifier)
   of the labeled and the unlabeled training images
7. C_n = mean of F(x_l) over x_l in Omega_L^{m,k-1} of class n                          (eq. 2.8)
8. each unlabeled x_u gets the label n* of its nearest centre, at distance d(x_u)
9. U_k^m = the N^{m,k} unlabeled samples of smallest d, N^{m,k} = |Omega_L^{m,k-1}|, so the
   labeled set doubles (250 -> 500 -> 1000 -> 2000 -> 4000)
10. Omega_L^{m,k} = Omega_L u U_1^m u ... u U_k^m                                       (eq. 2.1)

A new generation starts again from Omega_L (``ctx.labels.reset()``) with the previous
generation's networks. Before the first discovery (``warmup`` steps) the run is plain Mean
Teacher on Omega_L and the master is inactive; the master starts as a copy of the teacher at
the first discovery ("the discovered samples ... form the master network").

Snowball + MixMatch (§2.4 (4)): the student's loss is MixMatch's (``mixmatch.py``; its EMA is
the teacher) plus the master term of eq. 2.7, and discovery takes a high-confidence set of
``pool_factor`` x N nearest samples, then the N of them FARTHEST from their centres (samples
"too similar to the labeled ones ... cannot provide extra knowledge").

Choices where the dissertation is silent (written here and in the grid files):

- The discovery network: the master (§2.3.3: "we use the newly trained master network");
  ``discovery_model`` = "teacher" or "student" for the ablations (Table 2.11's "MT + discovery"
  has no master). Distances are Euclidean between embeddings (eval mode, no augmentation).
- Top N is global (not per class); candidates are the run's unlabeled training images not
  labeled now; discovered samples stay in the unlabeled pool too (J_theta's first term runs
  over all of Omega = Omega_L u Omega_U).
- l1 = 1 and l2 = the student method's own consistency weight and ramp (Mean Teacher's
  ``consistency_weight`` x sigmoid ramp; MixMatch's ``lambda_u`` x linear ramp); the master
  term has the same weight as the teacher term (``master_weight`` = 1 scales it).
- Generations warm-start from the previous networks (the text) with a fresh optimiser and
  schedule (``restart_optimizer``).
- The schedule is counted in steps: ``warmup`` steps, then ``generations`` x ``iterations``
  iterations of ``iteration_steps`` steps each; after the last one training goes on with the
  last labeled set until the run's ``steps``.
- Table 2.9's oracle column ("the same samples with the ground-truth labels") is
  ``discovered_labels = "true"``; the default, "predicted", never reads the true labels.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.methods.clusters import embed_images
from ssl_bench_plugins.methods.mean_teacher import NO_TEACHER, MeanTeacher
from ssl_bench_plugins.methods.mixmatch import MixMatch, linear_rampup
from ssl_bench_plugins.methods.ramps import sigmoid_rampup

Selection = Literal["nearest", "farthest", "random", "farthest_of_nearest"]


# ------------------------------------------------------------------ discovery (§2.3.3)
def class_centres(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 2.8: C_n = mean of the features of class n (num_classes x D; NaN rows for classes
    without samples, which no sample can then be nearest to)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    return sums / counts[:, None]


def nearest_centre(features: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest centre (its label n*) and the Euclidean distance to it."""
    distances = torch.cdist(features, centres).nan_to_num(float("inf"))
    d, label = distances.min(1)
    return label, d


def select(distance: torch.Tensor, n: int, how: Selection, pool_factor: int = 10,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Positions of the ``n`` discovered samples among the candidates, by their distance to the
    nearest centre: the nearest (Snowball), the farthest or a random n (Table 2.9's
    alternatives), or the farthest n of the ``pool_factor`` x n nearest (Snowball + MixMatch)."""
    n = min(n, len(distance))
    if how == "nearest":
        return torch.topk(distance, n, largest=False).indices
    if how == "farthest":
        return torch.topk(distance, n, largest=True).indices
    if how == "random":
        return torch.randperm(len(distance), generator=generator, device=distance.device)[:n]
    pool = torch.topk(distance, min(pool_factor * n, len(distance)), largest=False).indices
    return pool[torch.topk(distance[pool], n, largest=True).indices]


class SnowballDiscovery(Method):
    """The master network, the generation/iteration schedule and confident sample discovery,
    shared by both students. A student class mixes it in and adds :meth:`master_term` to its
    loss; :meth:`consistency_scale` is the student's consistency weight at a step."""

    needs_ema = True
    result_columns = ("labels_assigned", "labels_assigned_accuracy", "labels_assigned_error", "labeled_now")

    master_decay: float = hyperparameter(0.999, ge=0, le=0.99999, help="b: the master's EMA decay of the "
                                                                      "teacher (eq. 2.6; the text: 0.999)")
    master_weight: float = hyperparameter(1.0, ge=0, help="weight of the master-student term of J_theta relative "
                                                          "to the teacher-student one (eq. 2.7: 1; 0: no master "
                                                          "term, Table 2.11's 'MT + discovery')")
    warmup: int = hyperparameter(4000, ge=1, help="steps of the plain student on the original labels before the "
                                                  "first discovery (the text gives none)")
    iteration_steps: int = hyperparameter(4000, ge=1, help="steps of each iteration k (the text gives none)")
    iterations: int = hyperparameter(4, ge=1, help="K: discoveries per generation (the text: 3-4; 4 grows 250 to "
                                                   "4000)")
    generations: int = hyperparameter(3, ge=1, help="M: generations, each restarting from the original labels "
                                                    "(the text: about 3)")
    growth: float = hyperparameter(1.0, gt=0, help="N^{m,k} = growth x the labeled count now (the text: 1, the "
                                                   "labeled set doubles each iteration)")
    selection: Selection = hyperparameter("nearest", help="which samples join: the nearest to their centres "
                                                          "(Snowball), the farthest, random (Table 2.9), or the "
                                                          "farthest of the pool_factor x N nearest (+ MixMatch)")
    pool_factor: int = hyperparameter(10, ge=1, help="farthest_of_nearest: the high-confidence set is this many "
                                                     "times N (§2.4 (4): 10)")
    discovery_model: Literal["master", "teacher", "student"] = hyperparameter(
        "master", help="whose embeddings discover (§2.3.3: the master)")
    discovered_labels: Literal["predicted", "true"] = hyperparameter(
        "predicted", help="the nearest centre's label (the method) or the true label (Table 2.9's oracle column)")
    restart_optimizer: bool = hyperparameter(True, help="a fresh optimiser and schedule at each generation")

    def _init_discovery(self) -> None:
        self.master: torch.nn.Module | None = None
        self.generation, self.iteration, self.discovered = 0, 0, 0

    @property
    def discoveries(self) -> int:
        return self.generations * self.iterations

    # ---------------------------------------------------------------- the schedule
    def on_train_start(self, model, ctx):
        if ctx.data.unlabeled_x is not ctx.data.train_x:
            raise UserError(f"methods.{self.name} labels unlabeled TRAINING images of the labeled data set; this "
                            "run's unlabeled images come from a separate pool (set the data set's unlabeled pool "
                            "off, e.g. [base.datasets.stl10] unlabeled = false)")

    def on_step_end(self, model, ctx):
        done = ctx.step + 1  # steps trained so far
        if self.master is not None:
            self.update_master(ctx.ema_model)
        j, rest = divmod(done - self.warmup, self.iteration_steps)
        if done < self.warmup or rest or j >= self.discoveries:
            return
        self.generation, self.iteration = divmod(j, self.iterations)
        if self.iteration == 0 and self.generation > 0:  # a new generation: back to Omega_L
            ctx.labels.reset()
            if self.restart_optimizer:
                ctx.restart_optimizer()
        if self.master is None:  # the master starts as the teacher at the first discovery
            self.master = copy.deepcopy(ctx.ema_model)
        self.discover(model, ctx)

    @torch.no_grad()
    def update_master(self, teacher) -> None:
        """Eq. 2.6: G_M = b G_M + (1 - b) G_T (integer buffers copied)."""
        for m, t in zip(self.master.state_dict().values(), teacher.state_dict().values()):
            if m.is_floating_point():
                m.lerp_(t, 1.0 - self.master_decay)
            else:
                m.copy_(t)

    @torch.no_grad()
    def discover(self, model, ctx) -> None:
        """Steps 6-10: label the N unlabeled samples chosen by ``selection``."""
        net = {"master": self.master, "teacher": ctx.ema_model, "student": model}[self.discovery_model]
        data, labels = ctx.data, ctx.labels
        labeled = labels.labeled()
        candidates = data.unlabeled.unique()
        candidates = candidates[labels.current[candidates] < 0]
        if len(candidates) == 0:
            self.discovered = 0
            return
        f_labeled = embed_images(net, data.train_x[labeled], data.normalise)
        f_candidates = embed_images(net, data.train_x[candidates], data.normalise)
        centres = class_centres(f_labeled, labels.current[labeled], ctx.num_classes)
        predicted, distance = nearest_centre(f_candidates, centres)
        n = max(1, round(self.growth * len(labeled)))
        chosen = select(distance, n, self.selection, self.pool_factor, ctx.generator)
        new_labels = predicted[chosen] if self.discovered_labels == "predicted" else labels.truth[candidates[chosen]]
        labels.assign(candidates[chosen], new_labels)
        self.discovered = len(chosen)

    def diagnostics(self, model, ctx):
        return {"generation": float(self.generation), "iteration": float(self.iteration),
                "labeled_now": float(len(ctx.labels.labeled())), "discovered_last": float(self.discovered)}

    # ---------------------------------------------------------------- the master's part of eq. 2.7
    def master_term(self, x_labeled: torch.Tensor, student_logits: torch.Tensor, ctx) -> torch.Tensor | None:
        """E_{x_l in Omega_L^{m,k}} ||softmax G_M(x_l) - softmax G_S(x_l)||^2 (the mean over
        samples and classes, as the teacher term), times the student's consistency weight;
        None before the master exists or with master_weight = 0."""
        if self.master is None or not self.master_weight:
            return None
        with torch.no_grad():
            target = self.master(x_labeled).softmax(1)
        scale = self.master_weight * self.consistency_scale(ctx)
        return scale * F.mse_loss(student_logits.float().softmax(1), target.float())

    def consistency_scale(self, ctx) -> float:
        raise NotImplementedError


class Snowball(SnowballDiscovery, MeanTeacher):
    """J_S = l1 J_C + l2 J_theta with a master-teacher-student chain and confident sample discovery (ch. 2)."""

    name = "snowball"
    lambda_1: float = hyperparameter(1.0, ge=0, help="l1: weight of J_C (eq. 2.3; the text gives none)")

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self._init_discovery()

    def consistency_scale(self, ctx) -> float:
        return self.consistency_weight * sigmoid_rampup(ctx.step, self.ramp_up)  # l2 with Mean Teacher's ramp

    def loss_terms(self, batch, model, ctx):
        teacher = ctx.ema_model
        if teacher is None:
            raise ValueError(NO_TEACHER)
        logits_labeled = model(batch.x_labeled)
        terms = {"classification": self.lambda_1 * F.cross_entropy(logits_labeled, batch.y_labeled)}  # J_C
        if batch.x_unlabeled is not None:  # J_theta, teacher part
            student_view, teacher_view = batch.views["unlabeled"]
            with torch.no_grad():
                target = teacher(teacher_view).softmax(1)
            terms["consistency"] = self.consistency_scale(ctx) * F.mse_loss(model(student_view).softmax(1), target)
        master = self.master_term(batch.x_labeled, logits_labeled, ctx)  # J_theta, master part
        if master is not None:
            terms["master_consistency"] = master
        return terms


class SnowballMixMatch(SnowballDiscovery, MixMatch):
    """MixMatch's loss + the master term, discovery by the farthest of the 10 N nearest (§2.4 (4))."""

    name = "snowball_mixmatch"
    selection: Selection = hyperparameter("farthest_of_nearest", help=SnowballDiscovery.selection.help)

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self._init_discovery()

    def consistency_scale(self, ctx) -> float:
        return self.lambda_u * linear_rampup(ctx.step, self.ramp_up)

    def loss_terms(self, batch, model, ctx):
        terms = super().loss_terms(batch, model, ctx)
        if self.master is not None and self.master_weight:
            master = self.master_term(batch.x_labeled, model(batch.x_labeled), ctx)
            terms["master_consistency"] = master
        return terms


@hookimpl
def ssl_bench_methods():
    return [Snowball, SnowballMixMatch]
