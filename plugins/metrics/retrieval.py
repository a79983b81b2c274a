"""Retrieval metric family ``recall@*``: Recall@K (%) of the embeddings, ``recall@1``,
``recall@4``, ...

The protocol of deep metric learning on held-out classes (Song et al., "Deep metric learning
via lifted structured feature embedding", CVPR 2016, whose Stanford Online Products benchmark
fixed it; also CUB-200-2011 and Cars196 in the same paper): every image of the evaluation set
is a query in turn, and its gallery is every *other* image of the same set (the query itself is
excluded, otherwise it would always be its own nearest neighbour). A query is a hit if at
least one of its K nearest gallery images has the query's label;

    Recall@K = 100 * #{hits} / N.

Neighbours are ranked by cosine similarity of the L2-normalised embeddings, e_i / ||e_i||. On
normalised embeddings ||a - b||^2 = 2 - 2 <a, b>, so this is the same ranking as the Euclidean
distance between normalised embeddings that the metric-learning literature uses (Song et al.
2016; Schroff et al., "FaceNet", CVPR 2015). A zero embedding stays zero (``F.normalize``'s
eps) and has similarity 0 to everything.

Computation: queries are processed in chunks of ``chunk_size`` (default ``CHUNK_SIZE`` = 1024) rows on the
embeddings' device, so a chunk costs chunk_size x N similarities (a 10,000-image set needs
about 40 MB per chunk in float32, never the full N x N matrix). In each chunk the query's own
column is set to -inf and ``torch.topk`` picks the K largest similarities. Ties at the K-th
place are broken by ``torch.topk`` (unspecified order), which can only matter for exactly equal
similarities. K larger than the gallery (N - 1) is clamped to N - 1. Fewer than two images
give ``nan``. Embeddings are compared in float32 (float64 if they are float64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_bench.hookspecs import hookimpl
from ssl_bench.metric import Collected, Metric

#: queries per chunk of the similarity matrix
CHUNK_SIZE = 1024


def recall_at_k(collected: Collected, k: int, *, chunk_size: int | None = None) -> float:
    """Recall@K (%): share of queries with a same-label image among their K nearest neighbours
    (cosine similarity of L2-normalised embeddings; gallery = the set minus the query)."""
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if k < 1:
        raise ValueError(f"metric 'recall@{k}': K must be a positive integer")
    if chunk_size < 1:
        raise ValueError(f"recall@{k}: chunk_size must be positive, got {chunk_size}")
    emb = collected.embeddings
    if emb is None:
        raise ValueError(f"metric 'recall@{k}' needs the embeddings, and none were collected")
    if emb.dim() != 2 or len(emb) != len(collected.labels):
        raise ValueError(f"metric 'recall@{k}': embeddings of shape {tuple(emb.shape)} do not "
                         f"match {len(collected.labels)} labels (expected N x D)")
    n = len(emb)
    if n < 2:
        return math.nan
    emb = F.normalize(emb.detach().to(torch.float64 if emb.dtype == torch.float64 else torch.float32), dim=1)
    labels = collected.labels.detach().to(emb.device).reshape(-1)
    kk = min(k, n - 1)
    hits = 0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = emb[start:stop] @ emb.T  # (stop - start) x N
        rows = torch.arange(stop - start, device=emb.device)
        sims[rows, rows + start] = -math.inf  # the query is not in its own gallery
        neighbours = sims.topk(kk, dim=1).indices
        hits += int((labels[neighbours] == labels[start:stop, None]).any(dim=1).sum())
    return 100.0 * hits / n


@hookimpl
def ssl_bench_metrics():
    return [
        Metric("recall@*", recall_at_k, higher_is_better=True, needs=("embeddings",),
               help="Recall@K (%): queries with a same-class image among their K nearest other images "
                    "of the set (cosine similarity of L2-normalised embeddings; query excluded)"),
    ]
