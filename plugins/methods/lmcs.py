"""LMCS: learned model composition and critical sample discovery (seed 003, the dissertation's
chapter 3, §3.3), on a MixMatch student.

The student trains with MixMatch's loss and procedure (eqs. 3.1-3.3; ``mixmatch.py``); its EMA
(eq. 3.4, a = 0.999) is the engine's (protocol ``ema_decay``) and is the evaluated network.
Training is cut into LMCS "steps" of ``step_length`` optimiser steps (the text: 10 epochs). At
the end of each step k:

1. the previous-step student Theta_s^{k-1} <- a frozen copy of the student now
2. the master's cluster centres for J_D <- k-means (``clusters`` centres) of the master's
   features of the unlabeled images
3. critical sample discovery (§3.3.3) labels N^k more unlabeled images for the master's set
   Omega_G; when Omega_G has grown ``growth_limit`` (R_L = 10) times since the generation began,
   the generation ends and the student's labeled set becomes Omega_G (eq. 3.13)

and every optimiser step, besides the student's MixMatch terms:

4. the master Theta_m^k (§3.3.2, Fig. 3.3): at the composition layer each of the three
   students (the current one, the previous-step one, the EMA one) gives its feature map; each
   passes its own converter (one FC layer); the three are summed; the master decision network
   maps the sum to classes. Only the converters and the decision network train on the master's
   loss (the students' features are constants to it)
5. J_M = J_C + eta J_D (eq. 3.7) + J_L, with
   J_C = E_{x' in Omega_U} MSE(softmax master(x'), softmax EMA-student(x'))             (eq. 3.5)
   J_D = E_{x' in Omega_U} ||C_0(x') - f(x')|| / ||C_1(x') - f(x')||   (see the choice below)
   J_L = cross-entropy of the master on a batch of its labeled set Omega_G (the look-ahead)
6. the master guides the student: MixMatch's label guesses q of the unlabeled views come from
   the master (an EMA of its converters and decision network, decay ``master_decay`` = 0.99)

Critical sample discovery by confined maximum entropy search (§3.3.3), on the current student's
features g:

- C_n = mean of g(x) over the labeled x of class n                                     (eq. 3.8)
- d(x') = distance to the nearest centre; confined set Omega_C = {x' : d(x') <= Delta}  (eq. 3.9)
- for x' in Omega_C rank the labeled samples by distance, R(x) = 1, 2, ...; weight
  W(x) = beta / (beta + R(x) / |Omega_L|)                                              (eq. 3.10)
- soft label p(x') = sum_x W(x) onehot(x) / sum_x W(x)                                  (eq. 3.11)
- entropy H(x') = -sum_l p'_l log2 p'_l; the N^k of HIGHEST entropy join with the hard label
  argmax p(x')                                                                         (eq. 3.12)

Look-ahead (§3.3.4): the student trains on Omega_{G-1}, the master on Omega_G.

Choices where the dissertation is silent (also in the grid files):

- Composition layer: the embedding (the layer before the classifier), so the decision network
  is a linear classifier, initialised from the EMA student's head when the master is first
  composed; converters start as I/3 (the fused map starts as the mean of the three). This works
  for every backbone; a deeper composition layer would need a split of each backbone.
- J_D: eq. 3.6 as printed, sum (||C_0 - f|| - ||C_1 - f||)^2, is MINIMISED when the two
  distances are EQUAL, the opposite of the stated aim (the nearest centre clearly nearer than
  the second). We minimise the ratio ||f - C_0|| / ||f - C_1|| in [0, 1] instead, the form the
  same dissertation uses for TAC-CCL's L_CC (eq. 4.3), averaged over the batch.
- J_L: the text trains the composition network "with the whole training dataset, including both
  labeled and unlabeled samples" and gives the master Omega_G, but no labeled term; we add the
  cross-entropy on Omega_G (weight ``master_labeled_weight`` = 1).
- How the master guides the student: not said beyond "guide"; it supplies MixMatch's guessed
  labels (step 6). Before the first step ends the student guesses, as MixMatch.
- The hard label: "assigned hard labels by a maximum entropy criteria" does not say which
  label. The soft label's argmax is nearly a tie for exactly the samples the rule picks (the
  highest entropy), and in the tie the classes with the most labeled samples win the far ranks'
  weights: on the UCI digits (20 labels, MixMatch student) the second discovery's labels were
  5% right and the third's 0% (each discovery made the winning class larger). The confined set
  is built so that "we can assign labels to them with high confidence" from their nearest
  class centre, so that is the label (``hard_label = "nearest_centre"``); ``"vote"`` is the
  argmax.
- Delta: a distance has no scale shared across networks, so Delta is the ``confine_fraction``
  quantile of d over the candidates (0.5: the nearer half); beta = 0.05; ranks start at 1;
  centres over the master's current set Omega_G (its labels are the best known).
- Generations: Omega_G keeps growing across generations (eq. 3.13); generation g ends when
  |Omega_G| >= R_L x its size when g began (N^k doubles the set, capped there); ``generations``
  = 3 ("converges fast within about 3 generations"); then discovery stops.
- Evaluation: the EMA student (MixMatch's), so LMCS and MixMatch are compared on the same
  network; the master's test error is a diagnostic (``master_test_error``).
- Table 3.8's other discovery rules: ``discovery`` = min_distance (Snowball's nearest),
  confined/unconfined x max/min entropy, none.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import UserError, hookimpl, hyperparameter
from ssl_bench_plugins.methods.clusters import embed_images, kmeans_centres
from ssl_bench_plugins.methods.mixmatch import MixMatch, sharpen
from ssl_bench_plugins.methods.snowball import class_centres, nearest_centre
from ssl_bench_plugins.methods.vat import batchnorm_statistics_frozen

Discovery = Literal["confined_max_entropy", "confined_min_entropy", "unconfined_max_entropy",
                    "unconfined_min_entropy", "min_distance", "none"]
#: the students composed: current, previous-step, EMA
STUDENTS = 3


class LearnedModelComposition(nn.Module):
    """Fig. 3.3: one converter (FC) per student at the composition layer, summed, then the
    master decision network."""

    def __init__(self, dim: int, num_classes: int, students: int = STUDENTS):
        super().__init__()
        self.converters = nn.ModuleList(nn.Linear(dim, dim) for _ in range(students))
        for converter in self.converters:  # the fused map starts as the mean of the three
            nn.init.eye_(converter.weight)
            converter.weight.data /= students
            nn.init.zeros_(converter.bias)
        self.decision = nn.Linear(dim, num_classes)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(convert(f) for convert, f in zip(self.converters, features))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decision(self.fuse(features))


# ------------------------------------------------------------------ critical sample discovery (§3.3.3)
def rank_weights(count: int, beta: float, device=None) -> torch.Tensor:
    """Eq. 3.10 for ranks R = 1..count: beta / (beta + R / count)."""
    ranks = torch.arange(1, count + 1, device=device, dtype=torch.float64)
    return beta / (beta + ranks / count)


def soft_labels(candidates: torch.Tensor, labeled: torch.Tensor, labels: torch.Tensor, num_classes: int,
                beta: float, chunk: int = 1024) -> torch.Tensor:
    """Eq. 3.11: each candidate's rank-weighted vote of the labeled samples' one-hot labels."""
    w = rank_weights(len(labeled), beta, candidates.device)
    out = []
    for part in candidates.split(chunk):
        order = torch.cdist(part.double(), labeled.double()).argsort(1)  # nearest labeled first
        votes = torch.zeros(len(part), num_classes, dtype=torch.float64, device=part.device)
        votes.scatter_add_(1, labels[order], w.expand(len(part), -1))
        out.append(votes / w.sum())
    return torch.cat(out)


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Eq. 3.12: sum_l p_l log2 (1 / p_l), 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(1) / math.log(2)


def critical_samples(candidates: torch.Tensor, labeled: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     n: int, rule: Discovery, beta: float, confine_fraction: float,
                     hard_label: str = "nearest_centre") -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (among the candidates) and hard labels of the ``n`` discovered samples: the
    nearest centre's class (``hard_label = "nearest_centre"``) or the soft label's argmax
    (``"vote"``)."""
    label, d = nearest_centre(candidates, class_centres(labeled, labels, num_classes))
    if rule == "min_distance":
        chosen = torch.topk(d, min(n, len(d)), largest=False).indices
        return chosen, label[chosen]
    pool = torch.arange(len(candidates), device=candidates.device)
    if rule.startswith("confined"):
        delta = torch.quantile(d.double(), confine_fraction)
        pool = pool[d <= delta]  # eq. 3.9
    p = soft_labels(candidates[pool], labeled, labels, num_classes, beta)
    h = entropy_bits(p)
    top = torch.topk(h, min(n, len(pool)), largest=rule.endswith("max_entropy")).indices
    return pool[top], (label[pool[top]] if hard_label == "nearest_centre" else p[top].argmax(1))


class LMCS(MixMatch):
    """MixMatch student guided by a master composed from three students, with critical sample
    discovery and the master's look-ahead (dissertation ch. 3)."""

    name = "lmcs"
    needs_ema = True
    result_columns = ("labels_assigned", "labels_assigned_accuracy", "labels_assigned_error", "master_test_error",
                      "master_labeled")
    step_length: int = hyperparameter(5000, ge=1, help="optimiser steps per LMCS step k (the text: 10 epochs)")
    generations: int = hyperparameter(3, ge=0, help="generations of discovery (the text: about 3); 0: none")
    growth_limit: float = hyperparameter(10.0, gt=1, help="R_L: a generation ends when the master's labeled set "
                                                          "has grown this many times (the text: 10)")
    discovery: Discovery = hyperparameter("confined_max_entropy", help="the discovery rule (Table 3.8)")
    confine_fraction: float = hyperparameter(0.5, gt=0, le=1, help="Delta as the quantile of the distances to the "
                                                                   "nearest centre (the text gives none)")
    hard_label: Literal["nearest_centre", "vote"] = hyperparameter(
        "nearest_centre", help="the discovered sample's label: its nearest class centre's (the confinement's "
                               "premise) or the argmax of its soft label (eq. 3.11)")
    beta: float = hyperparameter(0.05, gt=0, help="beta of the rank weight, eq. 3.10 (the text gives none)")
    eta: float = hyperparameter(1.0, ge=0, help="weight of J_D in J_M, eq. 3.7 (the text gives none)")
    master_labeled_weight: float = hyperparameter(1.0, ge=0, help="weight of the master's cross-entropy on "
                                                                   "Omega_G (our addition)")
    master_decay: float = hyperparameter(0.99, ge=0, le=0.99999, help="EMA decay of the master decision network "
                                                                    "and converters (the text: 0.99)")
    clusters: int = hyperparameter(0, ge=0, help="N: k-means centres of J_D (0: the class count)")
    kmeans_images: int = hyperparameter(10000, ge=0, help="unlabeled images the J_D k-means sees (0: all)")
    master_guides: bool = hyperparameter(True, help="the master supplies MixMatch's guessed labels (False: "
                                                    "Table 3.10's 'without LMC')")

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.previous: nn.Module | None = None
        self.master: LearnedModelComposition | None = None  # the EMA of model.extras["lmc"]
        self.centres: torch.Tensor | None = None
        self.master_labels: torch.Tensor | None = None
        self.generation, self.generation_start = 0, 0

    def build_modules(self, model, num_outputs):
        return {"lmc": LearnedModelComposition(model.embedding_dim, num_outputs)}

    # ---------------------------------------------------------------- the composed master
    def student_features(self, model, ctx, x: torch.Tensor) -> list[torch.Tensor]:
        """The three students' features at the composition layer (constants to the master)."""
        with torch.no_grad(), batchnorm_statistics_frozen(model), batchnorm_statistics_frozen(ctx.ema_model):
            return [model.embed(x), self.previous.embed(x), ctx.ema_model.embed(x)]

    def guess(self, model, views, ctx):
        if self.master is None or not self.master_guides:
            return super().guess(model, views, ctx)
        with torch.no_grad():
            mean = torch.stack([self.master(self.student_features(model, ctx, v)).float().softmax(1)
                                for v in views]).mean(0)
        return sharpen(mean, self.temperature)

    def loss_terms(self, batch, model, ctx):
        terms = super().loss_terms(batch, model, ctx)  # the student's MixMatch terms
        if self.previous is None or batch.x_unlabeled is None:
            return terms
        lmc = model.extras["lmc"]
        features = self.student_features(model, ctx, batch.x_unlabeled)
        with torch.no_grad():
            target = ctx.ema_model.head(features[2]).float().softmax(1)
        fused = lmc.fuse(features)
        terms["master_consistency"] = F.mse_loss(lmc.decision(fused).float().softmax(1), target)  # J_C, eq. 3.5
        if self.eta and self.centres is not None:
            d = torch.cdist(fused.float(), self.centres).topk(2, largest=False).values  # C_0, C_1
            terms["master_discrimination"] = self.eta * (d[:, 0] / d[:, 1].clamp_min(1e-12)).mean()
        if self.master_labeled_weight:  # J_L on the master's (look-ahead) labeled set Omega_G
            labeled = torch.nonzero(self.master_labels >= 0).squeeze(1)
            pick = labeled[torch.randint(len(labeled), (len(batch.x_labeled),), generator=ctx.generator,
                                         device=labeled.device)]
            x = ctx.data.training_batch(ctx.data.train_x[pick])
            logits = lmc(self.student_features(model, ctx, x))
            terms["master_classification"] = self.master_labeled_weight * F.cross_entropy(
                logits, self.master_labels[pick])
        return terms

    # ---------------------------------------------------------------- the schedule
    def on_train_start(self, model, ctx):
        if ctx.data.unlabeled_x is not ctx.data.train_x:
            raise UserError("methods.lmcs labels unlabeled TRAINING images of the labeled data set; this run's "
                            "unlabeled images come from a separate pool (set the data set's unlabeled pool off)")
        self.master_labels = ctx.labels.current.clone()
        self.generation_start = int((self.master_labels >= 0).sum())

    def on_step_end(self, model, ctx):
        lmc = model.extras["lmc"]
        if self.master is not None:
            with torch.no_grad():
                for m, p in zip(self.master.parameters(), lmc.parameters()):
                    m.lerp_(p, 1.0 - self.master_decay)
        if (ctx.step + 1) % self.step_length:
            return
        if self.master is None:  # first composition: the decision network starts as the EMA head
            with torch.no_grad():
                lmc.decision.load_state_dict(ctx.ema_model.head.state_dict())
            self.master = copy.deepcopy(lmc).requires_grad_(False)
        self.previous = copy.deepcopy(model).requires_grad_(False)  # Theta_s^{k-1} for the next step
        self.recluster(model, ctx)
        if self.discovery != "none" and self.generation < self.generations:
            self.discover(model, ctx)

    @torch.no_grad()
    def master_features(self, model, ctx, images: torch.Tensor) -> torch.Tensor:
        out = []
        for part in images.split(1000):
            out.append(self.master.fuse(self.student_features(model, ctx, ctx.data.normalise(part))).float())
        return torch.cat(out)

    @torch.no_grad()
    def recluster(self, model, ctx) -> None:
        """J_D's centres: k-means of the master's features of (up to kmeans_images) unlabeled images."""
        if not self.eta:
            return
        images = ctx.data.unlabeled_x[ctx.data.unlabeled]
        if self.kmeans_images and self.kmeans_images < len(images):
            images = images[torch.randperm(len(images), generator=ctx.generator, device=ctx.device)[:self.kmeans_images]]
        k = self.clusters or ctx.num_classes
        if len(images) < k:
            raise UserError(f"methods.lmcs: J_D's k-means needs at least {k} unlabeled images, got {len(images)}")
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator, device=ctx.device))
        centres = kmeans_centres(self.master_features(model, ctx, images).double().cpu().numpy(), k, seed)
        self.centres = torch.as_tensor(centres, dtype=torch.float32, device=ctx.device)

    @torch.no_grad()
    def discover(self, model, ctx) -> None:
        """Critical samples join the master's set Omega_G; a finished generation hands Omega_G to
        the student (the look-ahead)."""
        data, labels = ctx.data, self.master_labels
        labeled = torch.nonzero(labels >= 0).squeeze(1)
        candidates = data.unlabeled.unique()
        candidates = candidates[labels[candidates] < 0]
        target = round(self.growth_limit * self.generation_start)
        n = min(len(labeled), target - len(labeled), len(candidates))
        if n > 0:
            g_labeled = embed_images(model, data.train_x[labeled], data.normalise)
            g_candidates = embed_images(model, data.train_x[candidates], data.normalise)
            chosen, hard = critical_samples(g_candidates, g_labeled, labels[labeled], ctx.num_classes, n,
                                            self.discovery, self.beta, self.confine_fraction, self.hard_label)
            labels[candidates[chosen]] = hard
        size = int((labels >= 0).sum())
        if size >= target or len(candidates) <= max(n, 0):  # the generation is complete
            changed = torch.nonzero(labels != ctx.labels.current).squeeze(1)
            ctx.labels.assign(changed, labels[changed])  # the student now trains on Omega_{G-1}
            self.generation += 1
            self.generation_start = size

    def diagnostics(self, model, ctx):
        out = {"generation": float(self.generation),
               "master_labeled": float((self.master_labels >= 0).sum()) if self.master_labels is not None else 0.0}
        if self.master is not None:
            with torch.no_grad():
                wrong = 0
                for x, y in zip(ctx.data.test_x.split(1000), ctx.data.test_y.split(1000)):
                    was = [model.training, self.previous.training, ctx.ema_model.training]
                    for net in (model, self.previous, ctx.ema_model):
                        net.eval()
                    logits = self.master(self.student_features(model, ctx, ctx.data.normalise(x)))
                    for net, mode in zip((model, self.previous, ctx.ema_model), was):
                        net.train(mode)
                    wrong += int((logits.argmax(1) != y.to(logits.device)).sum())
                out["master_test_error"] = 100.0 * wrong / len(ctx.data.test_y)
        return out


@hookimpl
def ssl_bench_methods():
    return [LMCS]
