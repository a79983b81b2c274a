"""Unsupervised deep metric learning by k-means pseudo-labels (``ms_baseline``): "TAC-CCL
(baseline)", seed 003 §4.3.2, and the unsupervised baseline of SAN (§5.4.3).

    "we adapt this method [the MS loss] from supervised metric learning to unsupervised metric
    learning using k-means clustering to assign pseudo labels ... we extend this similarity
    analysis to the whole training set using the approach of memory bank" (§4.3.2)

Algorithm (no true label reaches training; the task gives none: ``n_labeled = 0``):

1. before the first step, and every ``recluster_every`` steps: embed the run's unlabeled images
   (the training images of the training classes) with the current network (:meth:`embed`, eval
   mode), L2-normalise, k-means with ``clusters`` = K centres (scikit-learn, k-means++, seeded
   from the run) -> each image's pseudo-label is its cluster (``ctx.labels.assign``); the memory
   is emptied (its labels belong to the old clusters);
2. each step: a P x K batch of the pseudo-classes (the core's labeled sampler follows the
   assigned labels), the MS loss against the cross-batch memory (:mod:`multi_similarity`).

K = 100 on CUB / Cars and 10,000 on SOP (§4.4.2, §5.4.3, "close to the truth number of test
classes", §4.4.4); re-clustering "every 20 epochs" (§4.3.3; here in steps: 20 epochs of N images
in batches of B is 20 N / B steps). Ours: the k-means runs on all the unlabeled images
(``kmeans_images`` caps it), on the L2-normalised embeddings (the MS loss compares cosines).
The ``pseudo_label_nmi`` diagnostic (NMI of the clusters against the true classes, read only for
the curve) shows how good the pseudo-labels are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl
from ssl_bench.params import hyperparameter
from ssl_bench_plugins.methods.clusters import embed_images, kmeans_centres
from ssl_bench_plugins.methods.multi_similarity import MultiSimilarity


def nearest_labels(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) of each row of ``z``."""
    return torch.cdist(z, centres).argmin(1)


class KMeansPseudoLabels(Method):
    """The pseudo-labelling schedule of §4.3.2-4.3.3, for any metric-learning method: k-means of
    the unlabeled set's embeddings at the start and every ``recluster_every`` steps. Keeps the
    centres (``self.centres``, for TAC-CCL's L_CC) and the refresh steps (``self.refreshed``)."""

    label_source = "own"

    clusters: int = hyperparameter(100, ge=2, help="K of the k-means pseudo-labels (§4.4.2: 100 CUB/Cars, 10,000 SOP)")
    recluster_every: int = hyperparameter(0, ge=0, help="steps between k-means refreshes (0: only at the start; "
                                                        "§4.3.3: every 20 epochs)")
    kmeans_images: int = hyperparameter(0, ge=0, help="unlabeled images the k-means sees (0: all; the others get "
                                                      "their nearest centre)")

    def check(self, plan):
        super().check(plan)
        if plan.unlabeled_from_pool or plan.unlabeled_domain != plan.labeled_domain:
            raise UserError(f"methods.{self.name}: the pseudo-labels go to the training images, but this run's "
                            f"unlabeled images come from another pool or domain")
        if len(plan.subsets.unlabeled) < self.clusters:
            raise UserError(f"methods.{self.name}: k-means into {self.clusters} clusters needs at least as many "
                            f"unlabeled images, the run has {len(plan.subsets.unlabeled)}; lower clusters or raise "
                            f"n_unlabeled")

    def on_train_start(self, model, ctx):
        super().on_train_start(model, ctx)
        self.refreshed: list[int] = []
        self.centres: torch.Tensor | None = None
        self.relabel(model, ctx)

    def on_step_start(self, model, ctx):
        super().on_step_start(model, ctx)
        if self.recluster_every and ctx.step > 0 and ctx.step % self.recluster_every == 0:
            self.relabel(model, ctx)

    def relabel(self, model, ctx) -> None:
        """k-means of the unlabeled images' embeddings -> their pseudo-labels; the memory is emptied."""
        data = ctx.data
        z = F.normalize(embed_images(model, data.train_x[data.unlabeled], data.normalise,
                                     embed=lambda x: self.embed(model, x), chunk=500), dim=1)
        fit = z
        if self.kmeans_images and self.kmeans_images < len(z):
            fit = z[torch.randperm(len(z), generator=ctx.generator, device=ctx.device)[:self.kmeans_images]]
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator, device=ctx.device))
        centres = kmeans_centres(fit.double().cpu().numpy(), self.clusters, seed)
        self.centres = torch.as_tensor(centres, dtype=z.dtype, device=z.device)
        self.pseudo = nearest_labels(z, self.centres)
        ctx.labels.assign(data.unlabeled, self.pseudo, classes=False)  # cluster ids
        self.refreshed.append(ctx.step)
        self.forget()

    def diagnostics(self, model, ctx):
        stats = dict(super().diagnostics(model, ctx))
        truth = ctx.labels.truth
        if truth is not None:  # read for the curve only, never for training
            from sklearn.metrics import normalized_mutual_info_score

            stats["pseudo_label_nmi"] = float(normalized_mutual_info_score(
                truth[ctx.data.unlabeled].cpu().numpy(), self.pseudo.cpu().numpy()))
        return stats


class MultiSimilarityBaseline(KMeansPseudoLabels, MultiSimilarity):
    """TAC-CCL (baseline): the MS loss with a memory on k-means pseudo-labels (§4.3.2)."""

    name = "ms_baseline"
    result_columns = ("pseudo_label_nmi",)


@hookimpl
def ssl_bench_methods():
    return [MultiSimilarityBaseline]


__all__ = ["KMeansPseudoLabels", "MultiSimilarityBaseline", "nearest_labels"]
