"""Clustering metrics: the predictions are cluster ids, compared with the true classes.

``cluster_accuracy`` (%, higher is better): the accuracy under the best one-to-one mapping of
cluster ids to classes,

    ACC = 100 * max_m sum_i [m(prediction_i) == label_i] / N,

m ranging over injective partial maps clusters -> classes. The best m is found by the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment(C, maximize=True)``) on the contingency matrix
C[k, c] = #{i : prediction_i = k, label_i = c}, as in the deep-clustering literature (Xie et al.,
"Unsupervised deep embedding for clustering analysis" (DEC), ICML 2016; Ji et al., "Invariant
information clustering" (IIC), ICCV 2019; Haeusser et al., "Associative deep clustering" (ADC),
GCPR 2018). The number of clusters may differ from the number of classes: the assignment of a
rectangular C matches min(#clusters, #classes) pairs, and every image of an unmatched cluster
(or of an unmatched class) counts as wrong. This is *not* the many-to-one "purity" mapping
(each cluster to its majority class), which rewards over-clustering. Cluster ids and labels may
be any integers (they are compacted with ``unique``).

``nmi`` (in [0, 1], higher is better): ``sklearn.metrics.normalized_mutual_info_score(labels,
predictions, average_method="arithmetic")``, i.e. NMI = I(Y; K) / ((H(Y) + H(K)) / 2) (Strehl &
Ghosh's NMI with the arithmetic-mean normaliser, sklearn's default since 0.22; some papers use
the geometric mean sqrt(H(Y) H(K)), which gives different numbers). Reported as a fraction in
[0, 1], *not* in %; multiply by 100 to compare with papers that print NMI in %.

``ari`` (in [-1, 1], higher is better; 0 is the expectation for a random labelling, 1 identical
partitions): ``sklearn.metrics.adjusted_rand_score(labels, predictions)``, the Rand index
adjusted for chance of Hubert & Arabie, "Comparing partitions", J. Classification 1985.

All three give ``nan`` for an empty set.

``kmeans_accuracy`` (%, higher is better): clusters found by k-means on the set's *embeddings*
instead of the method's predictions, scored as ``cluster_accuracy``: k = the number of distinct
classes in the set, ``sklearn.cluster.KMeans(k, n_init=KMEANS_INIT, random_state=0)`` (seeded,
so the same embeddings give the same number). ADC's Table 1 row "ours (ResNet): K-Means" (k-means
on the trained network's embeddings) and, on the ``pixels`` backbone with ``steps = 0`` (the
network as initialised), the row "k-means on pixels". The set is clustered transductively (k-means
fitted on the evaluated images themselves), as those rows are.

``kmeans_nmi`` (in [0, 1], higher is better): the same seeded k-means clusters of the embeddings
(k = the classes present, ``kmeans_clusters``), scored as ``nmi`` (sklearn, arithmetic-mean
normaliser; a fraction, not %): the NMI of the deep-metric-learning papers (Song et al., CVPR
2016; Musgrave et al., "A Metric Learning Reality Check", ECCV 2020, whose library clusters with
faiss k-means instead, so its numbers can differ by the clustering found). Invariant to a
renaming of the classes or the clusters.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ssl_bench.hookspecs import hookimpl
from ssl_bench.metric import Collected, Metric


def _numpy_pair(collected: Collected, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, cluster ids) as int64 numpy arrays on the host."""
    pred, labels = collected.predictions_and_labels(name)
    return (labels.detach().reshape(-1).to("cpu", torch.int64).numpy(),
            pred.detach().reshape(-1).to("cpu", torch.int64).numpy())


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """C[k, c] = #{i : cluster_i = k-th distinct cluster id, label_i = c-th distinct label}."""
    cluster_ids, k = np.unique(clusters, return_inverse=True)
    class_ids, c = np.unique(labels, return_inverse=True)
    table = np.zeros((len(cluster_ids), len(class_ids)), dtype=np.int64)
    np.add.at(table, (k.reshape(-1), c.reshape(-1)), 1)
    return table


def cluster_accuracy(collected: Collected) -> float:
    """Accuracy (%) under the best one-to-one cluster -> class mapping (Hungarian algorithm on
    the contingency matrix); images of unmatched clusters count as wrong."""
    labels, clusters = _numpy_pair(collected, "cluster_accuracy")
    if len(labels) == 0:
        return math.nan
    return _matched_accuracy(contingency(labels, clusters), len(labels))


def nmi(collected: Collected) -> float:
    """Normalized mutual information in [0, 1], arithmetic-mean normaliser (sklearn)."""
    from sklearn.metrics import normalized_mutual_info_score

    labels, clusters = _numpy_pair(collected, "nmi")
    if len(labels) == 0:
        return math.nan
    return float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))


def ari(collected: Collected) -> float:
    """Adjusted Rand index in [-1, 1] (sklearn)."""
    from sklearn.metrics import adjusted_rand_score

    labels, clusters = _numpy_pair(collected, "ari")
    if len(labels) == 0:
        return math.nan
    return float(adjusted_rand_score(labels, clusters))


#: k-means restarts (best inertia kept) for ``kmeans_accuracy`` and ``kmeans_nmi``
KMEANS_INIT = 5


def kmeans_clusters(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Cluster ids of seeded k-means (k-means++ initialisation, KMEANS_INIT restarts)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=KMEANS_INIT, random_state=0).fit_predict(embeddings)


def _kmeans_of_embeddings(collected: Collected, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, k-means cluster ids) of the set's embeddings, k = the classes present (at most
    the distinct embeddings); None for an empty set."""
    if collected.embeddings is None:
        raise ValueError(f"metric {name!r} needs the embeddings, and none were collected")
    labels = collected.labels.detach().reshape(-1).to("cpu", torch.int64).numpy()
    if len(labels) == 0:
        return None
    embeddings = collected.embeddings.detach().to("cpu", torch.float64).reshape(len(labels), -1).numpy()
    k = min(len(np.unique(labels)), len(np.unique(embeddings, axis=0)))
    return labels, kmeans_clusters(embeddings, k)


def kmeans_accuracy(collected: Collected) -> float:
    """cluster_accuracy of k-means (k = the classes present) on the set's embeddings."""
    pair = _kmeans_of_embeddings(collected, "kmeans_accuracy")
    if pair is None:
        return math.nan
    labels, clusters = pair
    table = contingency(labels, clusters)
    return _matched_accuracy(table, len(labels))


def kmeans_nmi(collected: Collected) -> float:
    """NMI in [0, 1] (arithmetic-mean normaliser) of k-means (k = the classes present) on the
    set's embeddings: the deep-metric-learning papers' NMI."""
    from sklearn.metrics import normalized_mutual_info_score

    pair = _kmeans_of_embeddings(collected, "kmeans_nmi")
    if pair is None:
        return math.nan
    labels, clusters = pair
    return float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))


def _matched_accuracy(table: np.ndarray, n: int) -> float:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * int(table[rows, cols].sum()) / n


@hookimpl
def ssl_bench_metrics():
    return [
        Metric("cluster_accuracy", cluster_accuracy, higher_is_better=True, needs=("predictions",),
               help="clustering accuracy (%) under the best one-to-one cluster-to-class mapping "
                    "(Hungarian algorithm); images of unmatched clusters count as wrong"),
        Metric("nmi", nmi, higher_is_better=True, needs=("predictions",),
               help="normalized mutual information of clusters and classes, in [0, 1] (not %), "
                    "arithmetic-mean normaliser (sklearn default)"),
        Metric("ari", ari, higher_is_better=True, needs=("predictions",),
               help="adjusted Rand index of clusters and classes, in [-1, 1] (0: chance)"),
        Metric("kmeans_accuracy", kmeans_accuracy, higher_is_better=True, needs=("embeddings",),
               help="cluster_accuracy (%) of seeded k-means (k = classes) on the set's embeddings "
                    "(ADC Table 1's k-means rows; on backbone pixels with steps = 0: k-means on pixels)"),
        Metric("kmeans_nmi", kmeans_nmi, higher_is_better=True, needs=("embeddings",),
               help="nmi (in [0, 1], not %) of seeded k-means (k = classes) on the set's embeddings: "
                    "the NMI of the deep-metric-learning papers"),
    ]
