"""Domain metric ``mmd``: how far apart the embeddings of the two domains are (lower is better).

The squared Maximum Mean Discrepancy between the evaluation set's embeddings X = {x_i}, i <= m
(``collected.embeddings``, e.g. the target test set) and the other domain's Y = {y_j}, j <= n
(``collected.other.embeddings``, e.g. the source test set), by the biased V-statistic estimate
of Gretton et al., "A kernel two-sample test", JMLR 13:723-773, 2012 (eq. 5: MMD_b, of which
this is the square):

    MMD_b^2 = 1/m^2 sum_{i,j} k(x_i, x_j) + 1/n^2 sum_{i,j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j).

It is the squared RKHS distance of the two empirical mean embeddings, hence >= 0 (tiny negative
rounding is clamped to 0) and exactly 0 for identical samples.

Kernel: a sum of Gaussian RBF kernels over five bandwidths (multi-kernel MMD, as in Long et al.,
"Learning transferable features with deep adaptation networks" (DAN), ICML 2015),

    k(a, b) = sum_{h in H} exp(-||a - b||^2 / h),    H = {0.25, 0.5, 1, 2, 4} * h0,

with h0 the median heuristic: the median squared Euclidean distance over all distinct pairs of
the pooled sample X u Y (Gretton et al. 2012, section 8, use the median distance as the kernel
size). Note h plays the role of 2 sigma^2. Each kernel is at most 1, so MMD_b^2 lies in [0, 10].
If that median is 0 (more than half of the pairs coincide, e.g. collapsed embeddings) h0 is the
median of the non-zero squared distances; if all points coincide MMD_b^2 is 0.

Deterministic subsampling: at most ``MAX_SAMPLES`` = 1000 embeddings per domain, the *first*
1000 in the set's order (no random draw, so repeated evaluations of the same model agree; the
estimate is quadratic in the sample size). Computed in float64 on the embeddings' device; squared
distances by ``torch.cdist`` without the matrix-product shortcut (exact zeros on the diagonal).
An empty domain gives ``nan``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ssl_bench.hookspecs import hookimpl
from ssl_bench.metric import Collected, Metric

#: embeddings used per domain (the first ones, in order)
MAX_SAMPLES = 1000
#: multiples of the median heuristic h0 used as bandwidths
BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2, float64 (differences, not the |a|^2 + |b|^2 - 2ab expansion)."""
    a = a.to(torch.float64).reshape(len(a), -1)
    b = b.to(device=a.device, dtype=torch.float64).reshape(len(b), -1)
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def median_heuristic(dxx: torch.Tensor, dyy: torch.Tensor, dxy: torch.Tensor) -> float | None:
    """Median squared distance over the distinct pairs of the pooled sample, from its three
    blocks of squared distances; the median of the non-zero ones if that is 0; None if all are 0."""
    iu_x = torch.triu_indices(len(dxx), len(dxx), offset=1, device=dxx.device)
    iu_y = torch.triu_indices(len(dyy), len(dyy), offset=1, device=dyy.device)
    pairs = torch.cat([dxx[iu_x[0], iu_x[1]], dyy[iu_y[0], iu_y[1]], dxy.reshape(-1)])
    if len(pairs) == 0:
        return None
    median = float(torch.quantile(pairs, 0.5))
    if median > 0:
        return median
    positive = pairs[pairs > 0]
    return float(torch.quantile(positive, 0.5)) if len(positive) else None


def kernel_sums(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float]) -> tuple[float, float, float]:
    """(mean_{i,j} k(x_i, x_j), mean_{i,j} k(y_i, y_j), mean_{i,j} k(x_i, y_j)) for
    k(a, b) = sum_{h in bandwidths} exp(-||a - b||^2 / h), in float64."""
    dxx, dyy, dxy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    return _kernel_means(dxx, dyy, dxy, bandwidths)


def _kernel_means(dxx, dyy, dxy, bandwidths):
    def mean_kernel(d):
        return float(sum(torch.exp(-d / h) for h in bandwidths).mean())

    return mean_kernel(dxx), mean_kernel(dyy), mean_kernel(dxy)


def mmd2_biased(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float]) -> float:
    """MMD_b^2 (Gretton et al. 2012, eq. 5 squared) with the multi-bandwidth RBF kernel sum."""
    kxx, kyy, kxy = kernel_sums(x, y, bandwidths)
    return max(0.0, kxx + kyy - 2.0 * kxy)


def mmd(collected: Collected) -> float:
    """Squared MMD (biased V-statistic, float64) between this set's embeddings and the other
    domain's, first ``MAX_SAMPLES`` of each, RBF kernel sum over the median-heuristic bandwidths
    times ``BANDWIDTH_SCALES``."""
    other = collected.other
    if other is None:
        raise ValueError("metric 'mmd' compares two domains, but this evaluation set has no other "
                         "domain (collected.other is None): use it with a domain-adaptation task")
    if collected.embeddings is None or other.embeddings is None:
        raise ValueError("metric 'mmd' needs the embeddings of both domains, and "
                         f"{'this set' if collected.embeddings is None else 'the other domain'} has none")
    x = collected.embeddings.detach()[:MAX_SAMPLES].to(torch.float64)
    y = other.embeddings.detach()[:MAX_SAMPLES].to(device=x.device, dtype=torch.float64)
    if len(x) == 0 or len(y) == 0:
        return math.nan
    dxx, dyy, dxy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    h0 = median_heuristic(dxx, dyy, dxy)
    if h0 is None:  # every point of both domains coincides
        return 0.0
    kxx, kyy, kxy = _kernel_means(dxx, dyy, dxy, [s * h0 for s in BANDWIDTH_SCALES])
    return max(0.0, kxx + kyy - 2.0 * kxy)


@hookimpl
def ssl_bench_metrics():
    return [
        Metric("mmd", mmd, higher_is_better=False, needs=("embeddings", "other"),
               help="squared MMD (biased, Gretton et al. 2012) between the embeddings of the two domains, "
                    "Gaussian kernels at {0.25,0.5,1,2,4} x the median squared distance, first 1000 per domain"),
    ]
