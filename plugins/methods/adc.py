"""Associative Deep Clustering (Haeusser, Plapp, Golkov, Aljalbout, Cremers, GCPR 2018; the ADA
dissertation, ch. 5): a classification network trained with no labels.

k centroid variables mu_k (method-owned, ``model.extras["centroids"]``) carry the surrogate
labels 0..k-1; the network's linear head W maps embeddings to k cluster logits. Each step, with
an unlabeled batch x_i and 4 transformed copies tau(x_j) of it (views ``adc_tau``):

1. z_i = f(x_i), z_j = f(tau(x_j)): one forward pass of all 5 B images
2. L_assoc,aug = L_assoc(A = the 4 B augmented embeddings, each labelled with the index of its
   image; B = the B plain embeddings)                                               (§2.2, eq. 6)
3. L_norm = sum over every embedding (and, after the warm-up, centroid) of (||v|| - 1)^2   (eq. 7)
4. after the warm-up:
   L_assoc,c = L_assoc(A = the centroids with surrogate labels 0..k-1; B = the plain z_i)   (eq. 5)
   L_classification = cross-entropy of W mu_k against k (trains the cluster head)          (§2.2)
   L_trafo = mean_ij |1 - z_i^T z'_j - H(softmax(W z_i), softmax(W z'_j))|, z'_j = the first
   transformed copy                                                                        (eq. 4)
5. minimise L = alpha L_assoc,c + beta L_assoc,aug + gamma L_norm + delta L_trafo + L_classification

with L_assoc(A, B) = L_walker + visit_weight L_visit, LbA's association (ssl_bench_plugins.
methods.association; the paper writes crossentropy(T, P^ab) but defines T over A x A, which is
P^aba's shape, so the round trip is used, as in LbA). Schedule (§3.1): a warm-up of ``warmup``
steps with only beta and gamma on (5,000; MNIST and FRGC 1,000), then the centroids are set ONCE
by k-means on the training images' embeddings (scikit-learn, seeded from the run), then all
terms. Adam(0.8, 0.9), lr 8e-4 divided by 3 every 10k steps after a 2,000-step lr warm-up are
protocol settings of the grids (``optim.betas``, ``lr_decay_*``, ``optim.warmup_steps``).
Prediction: argmax of W f(x), the network's ordinary head.

Choices where the paper is silent (written here and in the grid files):

- L_norm's form: (||v|| - 1)^2 summed over the vectors ("an L2 loss to have norm 1"; the sum,
  not the mean, as the authors' code, github.com/jplapp/associative_deep_clustering,
  ``add_emb_normalization``).
- L_classification's weight: 1 (the paper gives none); it is off during the warm-up, when the
  centroids are not yet initialised, as alpha and delta are.
- L_trafo: H(p_i, p_j) = -sum_c p_i,c log p_j,c with the plain image's distribution as target;
  the augmented copy is the first of the 4 (the paper applies tau "once"); raw (not
  normalised) embeddings, which L_norm keeps near unit length; mean over all B^2 pairs ("the
  loss is divided by the number of summands").
- Centroids before the k-means initialisation: N(0, 1/D) (never used: alpha is 0 until then).
  The k-means: ``KMeans(k, n_init=3)`` on the embeddings (eval mode) of the run's unlabeled set,
  at most ``kmeans_images`` of them (seeded choice), seeded from the run's generator.
- tau (``adc_tau``; the paper: "cropping and flipping, Gaussian noise, small rotations and
  changes in brightness, saturation and hue", no parameters): horizontal flip p = 0.5, then
  LbA's STL-10 augmentation (square crop of 80-100 % of the side resized back, rotation ±10°,
  brightness x U(0.7, 1.3), saturation x U(0.5, 1.2), hue ±0.1 turns; the last two only on RGB),
  then Gaussian noise of standard deviation 0.03, clamped to [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import Augmentation, Method, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.augment.ops import stl10_augment
from ssl_bench_plugins.augment.pipelines import random_flip
from ssl_bench_plugins.methods.association import associate
from ssl_bench_plugins.methods.clusters import embed_images, kmeans_centres

#: transformed copies of each image in L_assoc,aug (§2.2: "4 random transformations")
COPIES = 4
#: standard deviation of tau's Gaussian noise (on the [0, 1] scale); our choice
NOISE_STD = 0.03


def adc_tau(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ADC's transformation tau: flip, crop + small rotation + colour changes, Gaussian noise."""
    x = stl10_augment(random_flip(x, generator), generator)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + NOISE_STD * noise).clamp_(0.0, 1.0)


class Centroids(nn.Module):
    """k trainable vectors of the embedding's size, the surrogate-labelled "labeled batch"."""

    def __init__(self, k: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) / math.sqrt(dim))


class AssociativeDeepClustering(Method):
    """alpha L_assoc,c + beta L_assoc,aug + gamma L_norm + delta L_trafo + L_class on centroids (ADC, eqs. 4-8)."""

    name = "adc"
    label_source = "none"  # no label reaches training: the clusters are its own
    views = {"unlabeled": ("adc_tau",) * COPIES}
    alpha: float = hyperparameter(1.0, ge=0, help="weight of L_assoc,c (centroids <-> images; §3.3: 1)")
    beta: float = hyperparameter(0.9, ge=0, help="weight of L_assoc,aug (augmented <-> plain images; §3.3: 0.9)")
    gamma: float = hyperparameter(1e-5, ge=0, help="weight of L_norm, (||v|| - 1)^2 (§3.3: 1e-5)")
    delta: float = hyperparameter(2e-5, ge=0, help="weight of L_trafo (eq. 4; §3.3: 2e-5)")
    classification_weight: float = hyperparameter(
        1.0, ge=0, help="weight of the cluster head's cross-entropy on the centroids (the paper gives none)")
    visit_weight: float = hyperparameter(0.3, ge=0, help="visit weight of both association losses (§3.3: 0.3; "
                                                         "MNIST 0.8, FRGC 0.1)")
    warmup: int = hyperparameter(5000, ge=0, help="steps with only beta and gamma on; then the k-means "
                                                  "initialisation of the centroids (§3.1: 5000; MNIST/FRGC 1000)")
    kmeans_images: int = hyperparameter(0, ge=0, help="embeddings the centroid k-means sees (0: the whole "
                                                      "unlabeled set)")
    log_epsilon: float = hyperparameter(1e-8, gt=0, help="eps in log(eps + p), as LbA's reference code")

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.beta == 0 and self.gamma == 0 and self.alpha == 0 and self.delta == 0 and self.classification_weight == 0:
            raise UserError("methods.adc: every loss weight is 0; nothing would be trained")
        #: the step at which the centroids were set by k-means (None: not yet)
        self.initialised_at: int | None = None

    def build_modules(self, model, num_outputs):
        return {"centroids": Centroids(num_outputs, model.embedding_dim)}

    # ---------------------------------------------------------------- the schedule
    def on_step_start(self, model, ctx):
        if ctx.step == self.warmup and self.initialised_at is None:
            self.initialise_centroids(model, ctx)

    @torch.no_grad()
    def initialise_centroids(self, model, ctx) -> None:
        """The end of the warm-up (§3.1): k-means on the training embeddings -> the centroids."""
        images = ctx.data.unlabeled_x[ctx.data.unlabeled]
        if self.kmeans_images and self.kmeans_images < len(images):
            pick = torch.randperm(len(images), generator=ctx.generator, device=ctx.device)[:self.kmeans_images]
            images = images[pick]
        embeddings = embed_images(model, images, ctx.data.normalise)
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator, device=ctx.device))
        centroids = model.extras["centroids"].weight
        k = len(centroids)
        if len(embeddings) < k:
            raise UserError(f"methods.adc: k-means needs at least {k} images for {k} centroids, got {len(embeddings)}")
        centres = kmeans_centres(embeddings.double().cpu().numpy(), k, seed)
        centroids.copy_(torch.as_tensor(centres, dtype=centroids.dtype, device=centroids.device))
        self.initialised_at = ctx.step

    # ---------------------------------------------------------------- the objective
    def assoc(self, a, labels_a, b):
        """L_assoc(A, B) = L_walker + visit_weight L_visit (LbA eqs. 1-5)."""
        association = associate(a, b, labels_a, self.log_epsilon)
        return association.walker_loss + self.visit_weight * association.visit_loss

    def loss_terms(self, batch, model, ctx):
        plain, copies = batch.x_unlabeled, batch.views["unlabeled"]
        n = len(plain)
        z = model.embed(torch.cat([plain, *copies]))
        z_plain, z_aug = z[:n], z[n:]
        image_index = torch.arange(n, device=z.device).repeat(len(copies))
        terms = {}
        if self.beta:
            terms["assoc_aug"] = self.beta * self.assoc(z_aug, image_index, z_plain)
        warm = ctx.step < self.warmup
        centroids = model.extras["centroids"].weight
        if self.gamma:
            vectors = z if warm else torch.cat([z, centroids])
            terms["norm"] = self.gamma * (vectors.norm(dim=1) - 1).square().sum()
        if warm:
            return terms
        surrogate = torch.arange(len(centroids), device=z.device)
        if self.alpha:
            terms["assoc_c"] = self.alpha * self.assoc(centroids, surrogate, z_plain)
        if self.classification_weight:
            terms["classification"] = self.classification_weight * F.cross_entropy(model.head(centroids), surrogate)
        if self.delta:
            z_tau = z_aug[:n]
            p_plain = model.head(z_plain).softmax(1)
            log_p_tau = model.head(z_tau).log_softmax(1)
            cross_entropy = -(p_plain @ log_p_tau.T)  # H(p_i, p_j), B x B
            terms["trafo"] = self.delta * (1 - z_plain @ z_tau.T - cross_entropy).abs().mean()
        return terms

    def diagnostics(self, model, ctx):
        centroids = model.extras["centroids"].weight
        return {"centroid_norm": centroids.detach().norm(dim=1).mean(),
                "centroids_initialised_at": -1 if self.initialised_at is None else self.initialised_at}


@hookimpl
def ssl_bench_methods():
    return [AssociativeDeepClustering]


@hookimpl
def ssl_bench_augmentations():
    return [Augmentation("adc_tau", adc_tau, "ADC's tau: flip, crop 80-100 % + rotation ±10°, brightness/"
                                             "saturation/hue, Gaussian noise 0.03 (our parameters)")]
