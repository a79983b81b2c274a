"""Retrieval metrics of the embeddings: the family ``recall@*`` (Recall@K (%), ``recall@1``,
``recall@4``, ...), ``precision_at_1`` (P@1, %) and ``map_at_r`` (MAP@R, %).

The protocol of deep metric learning on held-out classes (Song et al., "Deep metric learning
via lifted structured feature embedding", CVPR 2016, whose Stanford Online Products benchmark
fixed it; also CUB-200-2011 and Cars196 in the same paper): every image of the evaluation set
is a query in turn, and its gallery is every *other* image of the same set (the query itself is
excluded, otherwise it would always be its own nearest neighbour). A query is a hit if at
least one of its K nearest gallery images has the query's label;

    Recall@K = 100 * #{hits} / N.

``precision_at_1`` (P@1, %; Musgrave et al., "A Metric Learning Reality Check", ECCV 2020):
the share of queries whose nearest gallery image has the query's label. With a gallery of the
other images of the set this *is* Recall@1 (one neighbour: "at least one hit among 1" = "the
one is a hit"), so ``precision_at_1`` == ``recall@1``, bit for bit; it is listed under its
own name for the tables of the papers that use Musgrave et al.'s metrics. Every query counts,
also one whose class has no other image (always a miss); pytorch-metric-learning's
``AccuracyCalculator`` drops such "lone" queries from P@1 instead, so with singleton classes
its value is ours * N / (N - #lone queries); with none the two agree.

``map_at_r`` (MAP@R, %; Musgrave et al. 2020, Section 3.2): for a query q of class y_q let
R_q = #{j != q : y_j = y_q} (the other images of its class) and rel(i) = 1 if the i-th nearest
gallery image has label y_q, else 0; then

    AP@R(q) = (1 / R_q) * sum_{i=1..R_q} P(i) * rel(i),   P(i) = (1 / i) * sum_{j<=i} rel(j),
    MAP@R   = 100 * mean over the queries with R_q >= 1 of AP@R(q).

Queries with R_q = 0 (the only image of their class) have nothing to retrieve and are
*skipped* (not counted as 0), as in the paper and pytorch-metric-learning; if every query is
skipped MAP@R is ``nan``. MAP@R = 100 exactly when each query's R_q nearest images are its R_q
class mates.

Units: all three are percentages (as ``recall@K`` and the paper's tables: MAP@R 25.8 means
0.258); pytorch-metric-learning returns fractions (ours = 100 x library).

Neighbours are ranked by cosine similarity of the L2-normalised embeddings, e_i / ||e_i||. On
normalised embeddings ||a - b||^2 = 2 - 2 <a, b>, so this is the same ranking as the Euclidean
distance between normalised embeddings that the metric-learning literature uses (Song et al.
2016; Schroff et al., "FaceNet", CVPR 2015). A zero embedding stays zero (``F.normalize``'s
eps) and has similarity 0 to everything.

Computation: queries are processed in chunks of ``chunk_size`` (default ``CHUNK_SIZE`` = 1024) rows on the
embeddings' device, so a chunk costs chunk_size x N similarities (a 10,000-image set needs
about 40 MB per chunk in float32, never the full N x N matrix). In each chunk the query's own
column is set to -inf and ``torch.topk`` picks the K largest similarities (MAP@R: K = the
largest R_q of the chunk's queries, each query then reading only its first R_q). Ties at the
K-th place (and, for MAP@R, the order among tied neighbours) are broken by ``torch.topk``
(unspecified order), which can only matter for exactly equal similarities. K larger than the
gallery (N - 1) is clamped to N - 1. Fewer than two images give ``nan``. Embeddings are
compared in float32 (float64 if they are float64).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ssl_bench.hookspecs import hookimpl
from ssl_bench.metric import Collected, Metric

#: queries per chunk of the similarity matrix
CHUNK_SIZE = 1024


def _normalised(collected: Collected, name: str, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(L2-normalised embeddings, labels on their device, chunk size), checked; ValueError
    naming the metric ``name``."""
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be positive, got {chunk_size}")
    emb = collected.embeddings
    if emb is None:
        raise ValueError(f"metric '{name}' needs the embeddings, and none were collected")
    if emb.dim() != 2 or len(emb) != len(collected.labels):
        raise ValueError(f"metric '{name}': embeddings of shape {tuple(emb.shape)} do not "
                         f"match {len(collected.labels)} labels (expected N x D)")
    emb = F.normalize(emb.detach().to(torch.float64 if emb.dtype == torch.float64 else torch.float32), dim=1)
    labels = collected.labels.detach().to(emb.device).reshape(-1)
    return emb, labels, chunk_size


def _similarity_chunks(emb: torch.Tensor, chunk_size: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, similarities of queries start..stop-1 to all N images), the query's own
    column set to -inf: it is not in its own gallery."""
    n = len(emb)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = emb[start:stop] @ emb.T  # (stop - start) x N
        rows = torch.arange(stop - start, device=emb.device)
        sims[rows, rows + start] = -math.inf
        yield start, stop, sims


def _recall(collected: Collected, k: int, chunk_size: int | None, name: str) -> float:
    emb, labels, chunk_size = _normalised(collected, name, chunk_size)
    n = len(emb)
    if n < 2:
        return math.nan
    kk = min(k, n - 1)
    hits = 0
    for start, stop, sims in _similarity_chunks(emb, chunk_size):
        neighbours = sims.topk(kk, dim=1).indices
        hits += int((labels[neighbours] == labels[start:stop, None]).any(dim=1).sum())
    return 100.0 * hits / n


def recall_at_k(collected: Collected, k: int, *, chunk_size: int | None = None) -> float:
    """Recall@K (%): share of queries with a same-label image among their K nearest neighbours
    (cosine similarity of L2-normalised embeddings; gallery = the set minus the query)."""
    if k < 1:
        raise ValueError(f"metric 'recall@{k}': K must be a positive integer")
    return _recall(collected, k, chunk_size, f"recall@{k}")


def precision_at_1(collected: Collected, *, chunk_size: int | None = None) -> float:
    """P@1 (%): share of queries whose nearest other image has the query's label. In this
    protocol (gallery = the set minus the query) it equals ``recall@1`` exactly; queries
    without a class mate count (as misses), unlike pytorch-metric-learning's P@1."""
    return _recall(collected, 1, chunk_size, "precision_at_1")


def map_at_r(collected: Collected, *, chunk_size: int | None = None) -> float:
    """MAP@R (%) of Musgrave et al. 2020: mean over queries of AP@R = (1/R) sum_{i<=R} P(i) rel(i)
    over the R nearest other images, R = the query's class mates in the set; queries with
    R = 0 are skipped (``nan`` if all are)."""
    emb, labels, chunk_size = _normalised(collected, "map_at_r", chunk_size)
    n = len(emb)
    if n < 2:
        return math.nan
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    r_all = counts[inverse] - 1  # class mates of each query
    total, queries = 0.0, 0
    for start, stop, sims in _similarity_chunks(emb, chunk_size):
        r = r_all[start:stop]
        r_max = int(r.max())
        if r_max == 0:
            continue
        neighbours = sims.topk(r_max, dim=1).indices  # r_max <= N - 1
        ranks = torch.arange(1, r_max + 1, device=emb.device)
        rel = (labels[neighbours] == labels[start:stop, None]) & (ranks[None, :] <= r[:, None])
        precision = rel.cumsum(dim=1).to(torch.float64) / ranks.to(torch.float64)
        ap = (precision * rel).sum(dim=1) / r.clamp(min=1).to(torch.float64)
        valid = r > 0
        total += float(ap[valid].sum())
        queries += int(valid.sum())
    return 100.0 * total / queries if queries else math.nan


@hookimpl
def ssl_bench_metrics():
    return [
        Metric("recall@*", recall_at_k, higher_is_better=True, needs=("embeddings",),
               help="Recall@K (%): queries with a same-class image among their K nearest other images "
                    "of the set (cosine similarity of L2-normalised embeddings; query excluded)"),
        Metric("precision_at_1", precision_at_1, higher_is_better=True, needs=("embeddings",),
               help="P@1 (%): queries whose nearest other image of the set has their class (Musgrave et al. "
                    "2020; equal to recall@1 in this protocol; cosine similarity, query excluded)"),
        Metric("map_at_r", map_at_r, higher_is_better=True, needs=("embeddings",),
               help="MAP@R (%) of Musgrave et al. 2020: mean over queries of the average precision over the "
                    "R nearest other images, R = the query's class mates (queries with R = 0 skipped; "
                    "cosine similarity, query excluded)"),
    ]
