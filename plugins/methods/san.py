"""SAN: the spatial assembly network (seed 003 ch. 5, §5.3; Figs. 5.2-5.3), supervised (``san``) and
unsupervised (``san_unsupervised``, k-means pseudo-labels as ``ms_baseline``).

At a stage of the backbone with feature map F (N = h x w positions, C channels), a small
network Phi predicts an N x N weight matrix w(u, v) from F, and the map is re-assembled

    G(v, c) = sum_u w(u, v) F(u, c)                                                    (eq. 5.4)

with w doubly stochastic: sum_u w(u, v) = 1, sum_v w(u, v) = 1, w > 0 (eq. 5.3; the relaxation
of a spatial permutation, eqs. 5.1-5.2). The rest of the backbone ("the upper network G")
continues from G. Training adds to the metric loss (MS + memory, eq. 5.9; :mod:`multi_similarity`)

    L_Phi = lambda_1 E[w] + lambda_2 C[w] + lambda_3 L_LC                             (eq. 5.12)

- E (eq. 5.5): entropy (bits) of the column-normalised and of the row-normalised weights
  ("minimum entropy": locality);
- C (eq. 5.6): sum_{u1 != u2} sum_v w(u1, v) w(u2, v) + the same over columns ("minimum
  correlation": different inputs feed different outputs);
- L_LC (eqs. 5.7-5.8): for each position (i, j) and each of its 8 neighbours (i', j'),
  alpha = cos(F_ij, F_i'j') times ||W_ij - S[W_i'j']||_2, W_ij the 2-D weight map of point (i, j)
  and S the one-point shift that aligns (i', j') with (i, j) (zeros shifted in).

Choices where the dissertation is silent (also in the parameters' help):
- Doubly stochastic by Sinkhorn normalisation (Sinkhorn 1964; Adams & Zemel 2011): ``iterations``
  alternating row / column normalisations in the log domain, ending with the columns (so each
  output position's weights sum to 1 exactly and the rows to 1 up to the iterations' accuracy).
- Phi = 1x1 conv (C -> ``hidden``), ReLU, 1x1 conv (-> N): position u's logits for w(u, .). Its last
  layer starts at zero and ``identity_prior`` is added to the diagonal logits, so the layer starts
  close to the identity (prior 5, N = 49: w(u, u) ~ 0.76) instead of averaging every position.
- W_ij in eq. 5.8 is output point v = (i, j)'s map over the inputs u (Fig. 5.4 draws one map per
  output point); alpha is computed on the detached input features (a weight, not a target).
- The three terms are AVERAGED (per row / column / neighbour pair and over the batch) rather than
  summed, so that lambda does not scale with N; lambda_1 = 0.01, lambda_2 = lambda_3 = 0.1 (the
  dissertation gives none).
- The stage (``assembly_at``): "an intermediate layer" (§5.3.3), by default the second-deepest
  stage, so that a stage of the network processes the assembled map. (Directly before a global
  average pooling a doubly stochastic assembly changes nothing: the rows sum to 1.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import Method, hookimpl
from ssl_bench.params import hyperparameter
from ssl_bench_plugins.methods.ms_baseline import MultiSimilarityBaseline
from ssl_bench_plugins.methods.multi_similarity import MultiSimilarity

NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def sinkhorn(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """B x N x N logits -> doubly stochastic weights (rows u and columns v sum to 1; columns exactly)."""
    log_w = logits
    for _ in range(iterations):
        log_w = log_w - torch.logsumexp(log_w, dim=2, keepdim=True)  # rows
        log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True)  # columns
    return log_w.exp()


class SpatialAssembly(nn.Module):
    """Phi and the assembly of eq. 5.4: ``forward(F)`` -> (G, w), w: B x N x N, w[b, u, v]."""

    def __init__(self, channels: int, height: int, width: int, hidden: int, identity_prior: float, iterations: int):
        super().__init__()
        n = height * width
        self.phi = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, n, 1))
        nn.init.zeros_(self.phi[2].weight)
        nn.init.zeros_(self.phi[2].bias)
        self.register_buffer("prior", identity_prior * torch.eye(n), persistent=False)
        self.iterations = iterations

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.phi(f).flatten(2).transpose(1, 2)  # b, u (position), v (channel = output position)
        w = sinkhorn(logits + self.prior.to(logits.dtype), self.iterations)
        g = torch.einsum("buv,bcu->bcv", w, f.flatten(2)).reshape(f.shape)
        return g, w


def entropy_bits(w: torch.Tensor) -> torch.Tensor:
    """Eq. 5.5, averaged: mean entropy (bits) of the normalised columns plus that of the rows."""
    def mean_entropy(p):
        return -(p * torch.log2(p.clamp_min(1e-12))).sum(-1).mean()

    columns = w / w.sum(1, keepdim=True)
    rows = w / w.sum(2, keepdim=True)
    return mean_entropy(columns.transpose(1, 2)) + mean_entropy(rows)


def correlation(w: torch.Tensor) -> torch.Tensor:
    """Eq. 5.6, averaged per column and per row: sum_{u1 != u2} w(u1, v) w(u2, v) = (sum_u w)^2 - sum_u w^2."""
    squares = w.pow(2)
    columns = w.sum(1).pow(2) - squares.sum(1)
    rows = w.sum(2).pow(2) - squares.sum(2)
    return columns.mean() + rows.mean()


def local_coherence(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Eqs. 5.7-5.8, averaged over the neighbour pairs and the batch."""
    b, _, h, wd = f.shape
    maps = w.transpose(1, 2).reshape(b, h, wd, h, wd)  # [v_i, v_j] -> the 2-D map over u
    unit = F.normalize(f.detach(), dim=1)
    padded = F.pad(maps, (1, 1, 1, 1))  # zeros shifted in
    total, pairs = w.new_zeros(()), 0
    for di, dj in NEIGHBOURS:
        i0, i1, j0, j1 = max(0, -di), h - max(0, di), max(0, -dj), wd - max(0, dj)
        if i1 <= i0 or j1 <= j0:
            continue
        own = maps[:, i0:i1, j0:j1]
        neighbour = padded[:, i0 + di:i1 + di, j0 + dj:j1 + dj][:, :, :, 1 + di:1 + di + h, 1 + dj:1 + dj + wd]
        alpha = (unit[:, :, i0:i1, j0:j1] * unit[:, :, i0 + di:i1 + di, j0 + dj:j1 + dj]).sum(1)
        total = total + (alpha * (own - neighbour).flatten(3).norm(dim=3)).sum()
        pairs += own.shape[1] * own.shape[2]
    return total / max(pairs * b, 1)


class SpatialAssemblyTerms(Method):
    """The SAN layer and eq. 5.12's terms on top of a metric-learning method's loss."""

    assembly_at: str = hyperparameter("", help="backbone stage whose map is re-assembled ('': the second-deepest; "
                                               "§5.3.3: 'an intermediate layer')")
    hidden: int = hyperparameter(64, ge=1, help="Phi's hidden width (not given; ours)")
    identity_prior: float = hyperparameter(5.0, ge=0, help="logit added to w(u, u) at the start (not given; ours)")
    iterations: int = hyperparameter(20, ge=1, help="Sinkhorn iterations for eq. 5.3 (the dissertation does not say "
                                                    "how it is enforced)")
    lambda_1: float = hyperparameter(0.01, ge=0, help="weight of the entropy E, eq. 5.5 (not given; ours)")
    lambda_2: float = hyperparameter(0.1, ge=0, help="weight of the correlation C, eq. 5.6 (not given; ours)")
    lambda_3: float = hyperparameter(0.1, ge=0, help="weight of the local coherence L_LC, eq. 5.8 (not given; ours)")

    def point(self, model) -> str:
        if self.assembly_at:
            return model.feature_point(self.assembly_at)
        points = model.feature_points or (model.feature_point(),)
        return points[-2] if len(points) > 1 else points[-1]

    def build_modules(self, model, num_outputs):
        channels, h, w = model.feature_shape(self.point(model))
        return {"assembly": SpatialAssembly(channels, h, w, self.hidden, self.identity_prior, self.iterations)}

    def assemble(self, model, x):
        """(embedding, weights w, the map before assembly) of a normalised batch."""
        point = self.point(model)
        f = model.feature_map(x, point)
        g, w = model.extras["assembly"](f)
        return model.embed_map(g, point), w, f

    def embed(self, model, x):
        return self.assemble(model, x)[0]

    def loss_terms(self, batch, model, ctx):
        z, w, f = self.assemble(model, batch.x_labeled)
        terms = {"multi_similarity": self.metric_loss(z, batch.y_labeled, ctx)}
        if self.lambda_1:
            terms["entropy"] = self.lambda_1 * entropy_bits(w)
        if self.lambda_2:
            terms["correlation"] = self.lambda_2 * correlation(w)
        if self.lambda_3:
            terms["local_coherence"] = self.lambda_3 * local_coherence(w, f)
        return terms


class SpatialAssemblySupervised(SpatialAssemblyTerms, MultiSimilarity):
    """SAN, supervised (§5.4.2): MS loss + memory on the task's labels, through the SAN layer."""

    name = "san"


class SpatialAssemblyUnsupervised(SpatialAssemblyTerms, MultiSimilarityBaseline):
    """SAN, unsupervised (§5.4.3): MS loss + memory on k-means pseudo-labels, through the SAN layer."""

    name = "san_unsupervised"


@hookimpl
def ssl_bench_methods():
    return [SpatialAssemblySupervised, SpatialAssemblyUnsupervised]
