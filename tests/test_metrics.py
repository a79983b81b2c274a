"""The built-in metric plugins (plugins/metrics/), on cases whose values are computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_bench.metric import Collected, Metric, parse_metric_name
from ssl_bench_plugins.metrics import classification, clustering, domain, retrieval


def t(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype)


def by_name(module) -> dict[str, Metric]:
    return {m.name: m for m in module.ssl_bench_metrics()}


# --- the plugin hooks --------------------------------------------------------------------------

def test_hooks_declare_the_metrics_with_direction_and_needs():
    metrics = {}
    for module in (classification, clustering, retrieval, domain):
        metrics.update(by_name(module))
    assert set(metrics) == {"error", "accuracy", "cluster_accuracy", "nmi", "ari", "recall@*", "mmd",
                            "kmeans_accuracy", "kmeans_nmi", "precision_at_1", "map_at_r"}
    lower = {name for name, m in metrics.items() if not m.higher_is_better}
    assert lower == {"error", "mmd"}
    assert metrics["recall@*"].is_family and tuple(metrics["recall@*"].needs) == ("embeddings",)
    assert set(metrics["mmd"].needs) == {"embeddings", "other"}
    for name in ("error", "accuracy", "cluster_accuracy", "nmi", "ari"):
        assert tuple(metrics[name].needs) == ("predictions",)
    assert all(m.help for m in metrics.values())


def test_recall_family_is_called_through_parse_metric_name():
    family, k = parse_metric_name("recall@4")
    assert (family, k) == ("recall@*", 4)
    metric = by_name(retrieval)[family]
    emb = t([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]], torch.float32)
    assert metric.compute(Collected(t([0, 0, 1, 1]), embeddings=emb), k) == 100.0


# --- classification ----------------------------------------------------------------------------

def test_error_and_accuracy_on_four_samples_with_one_wrong():
    c = Collected(t([0, 1, 2, 3]), predictions=t([0, 1, 2, 0]))
    assert classification.error(c) == 25.0
    assert classification.accuracy(c) == 75.0


def test_error_keeps_the_committed_float_expression():
    c = Collected(t([0, 0, 0]), predictions=t([0, 1, 0]))
    assert classification.error(c) == 100.0 * 1 / 3  # 33.333333333333336, bit for bit
    assert classification.accuracy(c) == 100.0 * 2 / 3


def test_error_of_an_empty_set_is_nan_and_shape_mismatch_is_an_error():
    empty = Collected(t([]), predictions=t([]))
    assert math.isnan(classification.error(empty)) and math.isnan(classification.accuracy(empty))
    with pytest.raises(ValueError, match="error"):
        classification.error(Collected(t([0, 1]), predictions=t([0])))


# --- clustering --------------------------------------------------------------------------------

def test_cluster_accuracy_ignores_a_permutation_of_cluster_ids():
    labels = t([0, 0, 1, 1, 2, 2])
    c = Collected(labels, predictions=t([2, 2, 0, 0, 1, 1]))
    assert clustering.cluster_accuracy(c) == 100.0
    # arbitrary (negative, large) ids are fine too
    assert clustering.cluster_accuracy(Collected(t([3, 3, 7, 7]), predictions=t([-5, -5, 100, 100]))) == 100.0


def test_cluster_accuracy_six_sample_hand_case():
    # contingency (cluster x class): cluster 0 = {class 0: 1, class 1: 2}, cluster 1 = {class 0: 2},
    # cluster 2 = {class 1: 1}. Best one-to-one: 1->0 (2) + 0->1 (2) = 4 of 6.
    c = Collected(t([0, 0, 0, 1, 1, 1]), predictions=t([1, 1, 0, 0, 0, 2]))
    assert clustering.cluster_accuracy(c) == 100.0 * 4 / 6


def test_cluster_accuracy_is_the_hungarian_optimum_not_greedy_nor_majority():
    # C = [[3, 2], [2, 0]] (rows: clusters 0, 1; columns: classes 0, 1).
    # greedy (largest cell first): 0->0 (3) + 1->1 (0) = 3; majority vote (many-to-one): 3 + 2 = 5;
    # Hungarian (one-to-one optimum): 0->1 (2) + 1->0 (2) = 4.
    labels = t([0, 0, 0, 1, 1, 0, 0])
    clusters = t([0, 0, 0, 0, 0, 1, 1])
    assert clustering.cluster_accuracy(Collected(labels, predictions=clusters)) == 100.0 * 4 / 7


def test_cluster_accuracy_with_more_or_fewer_clusters_than_classes():
    # 4 clusters, 2 classes: only two clusters can be matched, the other two count as wrong
    assert clustering.cluster_accuracy(Collected(t([0, 0, 1, 1]), predictions=t([0, 1, 2, 3]))) == 50.0
    # 3 clusters, 2 classes: {0,0}->0, {1,1}->1, the single image of cluster 2 is wrong
    assert clustering.cluster_accuracy(Collected(t([0, 0, 1, 1, 1]), predictions=t([0, 0, 1, 1, 2]))) == 80.0
    # 1 cluster, 3 classes: it matches the largest class only
    assert clustering.cluster_accuracy(Collected(t([0, 1, 2, 2]), predictions=t([5, 5, 5, 5]))) == 50.0


def test_nmi_and_ari_of_identical_partitions_are_one():
    labels = t([0, 0, 1, 1, 2, 2, 2])
    c = Collected(labels, predictions=t([4, 4, 0, 0, 9, 9, 9]))  # same partition, other ids
    assert clustering.nmi(c) == pytest.approx(1.0, abs=1e-12)
    assert clustering.ari(c) == pytest.approx(1.0, abs=1e-12)


def test_nmi_and_ari_hand_case():
    # classes {0,1,2} {3,4,5}; clusters {0,1} {2,3} {4,5}; n_ij = [[2, 1, 0], [0, 1, 2]]
    c = Collected(t([0, 0, 0, 1, 1, 1]), predictions=t([0, 0, 1, 1, 2, 2]))
    # H(Y) = ln 2, H(K) = ln 3, I = sum n_ij/n ln(n n_ij / (a_i b_j)) = 2 * (2/6) ln 2 = (2/3) ln 2
    # NMI (arithmetic) = I / ((H(Y) + H(K)) / 2) = (4/3) ln 2 / ln 6
    assert clustering.nmi(c) == pytest.approx((4 / 3) * math.log(2) / math.log(6), abs=1e-12)
    # ARI: sum_ij C(n_ij, 2) = 2, sum_i C(a_i, 2) = 6, sum_j C(b_j, 2) = 3, C(6, 2) = 15
    # expected = 6 * 3 / 15 = 1.2, max = (6 + 3) / 2 = 4.5, ARI = (2 - 1.2) / (4.5 - 1.2) = 8/33
    assert clustering.ari(c) == pytest.approx(8 / 33, abs=1e-12)


def test_clustering_metrics_of_an_empty_set_are_nan():
    empty = Collected(t([]), predictions=t([]))
    for f in (clustering.cluster_accuracy, clustering.nmi, clustering.ari):
        assert math.isnan(f(empty))


# --- retrieval ---------------------------------------------------------------------------------

def at_angles(degrees, scales=None):
    scales = scales or [1.0] * len(degrees)
    return torch.tensor([[s * math.cos(math.radians(d)), s * math.sin(math.radians(d))]
                         for d, s in zip(degrees, scales)], dtype=torch.float32)


def test_recall_two_tight_pairs_of_different_classes():
    emb = t([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]], torch.float32)
    assert retrieval.recall_at_k(Collected(t([0, 0, 1, 1]), embeddings=emb), 1) == 100.0


def test_recall_hand_case_where_nearest_neighbours_cross_classes():
    # angles 0, 10 (class 0), 15, 90 (class 1); magnitudes vary (cosine ignores them).
    # NN of 0 -> 10 (hit); of 10 -> 15 (miss); of 15 -> 10 (miss); of 90 -> 15 (hit): R@1 = 50
    # 2-NN: 0 -> {10, 15} hit; 10 -> {15, 0} hit; 15 -> {10, 0} miss; 90 -> {15, 10} hit: R@2 = 75
    emb = at_angles([0, 10, 15, 90], scales=[1.0, 0.2, 3.0, 5.0])
    c = Collected(t([0, 0, 1, 1]), embeddings=emb)
    assert retrieval.recall_at_k(c, 1) == 50.0
    assert retrieval.recall_at_k(c, 2) == 75.0
    assert retrieval.recall_at_k(c, 3) == 100.0


def test_recall_ranks_by_cosine_not_raw_euclidean_distance():
    # a = (1, 0) and b = (100, 1) point the same way (class 0); c = (0, 0.5) is class 1.
    # cosine: a -> b hit, b -> a hit, c -> b (89.4 deg) miss: 2/3.
    # (raw Euclidean would give a -> c miss, b -> a hit, c -> a miss: 1/3.)
    emb = t([[1.0, 0.0], [100.0, 1.0], [0.0, 0.5]], torch.float32)
    assert retrieval.recall_at_k(Collected(t([0, 0, 1]), embeddings=emb), 1) == 100.0 * 2 / 3


def test_recall_excludes_the_query_from_its_gallery():
    # one image per class: no other image can match, so 0 (it would be 100 with the query kept)
    emb = at_angles([0, 45, 90, 135])
    c = Collected(t([0, 1, 2, 3]), embeddings=emb)
    assert retrieval.recall_at_k(c, 1) == 0.0
    assert retrieval.recall_at_k(c, 3) == 0.0


def random_retrieval_set(n=50, d=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Collected(torch.arange(n) % classes, embeddings=torch.randn(n, d, generator=g))


def reference_recall(c: Collected, k: int) -> float:
    """Naive loop: Euclidean distance between normalised embeddings, query excluded."""
    e = c.embeddings / c.embeddings.norm(dim=1, keepdim=True)
    hits = 0
    for i in range(len(e)):
        dist = [(float((e[i] - e[j]).norm()), j) for j in range(len(e)) if j != i]
        nearest = [j for _, j in sorted(dist)[:k]]
        hits += any(int(c.labels[j]) == int(c.labels[i]) for j in nearest)
    return 100.0 * hits / len(e)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_recall_is_the_same_for_every_chunk_size_and_matches_a_naive_reference(k):
    c = random_retrieval_set()
    one_chunk = retrieval.recall_at_k(c, k)
    for chunk_size in (1, 7, 49, 50):
        assert retrieval.recall_at_k(c, k, chunk_size=chunk_size) == one_chunk
    assert one_chunk == reference_recall(c, k)


def test_recall_chunking_through_the_module_default(monkeypatch):
    c = random_retrieval_set(n=40, seed=1)
    expected = retrieval.recall_at_k(c, 3)
    calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(retrieval, "CHUNK_SIZE", 3)
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, *a, **kw: calls.append(len(self)) or real_topk(self, *a, **kw))
    assert by_name(retrieval)["recall@*"].compute(c, 3) == expected
    assert calls == [3] * 13 + [1]  # 40 queries in chunks of 3


def test_recall_is_monotone_in_k_and_k_is_clamped_to_the_gallery():
    c = random_retrieval_set(n=30, classes=6, seed=2)
    values = [retrieval.recall_at_k(c, k) for k in range(1, 30)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[-1] == 100.0  # every class has 5 images, the whole gallery contains a match
    assert retrieval.recall_at_k(c, 1000) == values[-1]


def test_recall_edge_cases():
    assert math.isnan(retrieval.recall_at_k(Collected(t([0]), embeddings=torch.ones(1, 2)), 1))
    with pytest.raises(ValueError, match="embeddings"):
        retrieval.recall_at_k(Collected(t([0, 1])), 1)


# --- domain: MMD -------------------------------------------------------------------------------

def two_domains(x, y):
    return Collected(torch.zeros(len(x), dtype=torch.int64), embeddings=x,
                     other=Collected(torch.zeros(len(y), dtype=torch.int64), embeddings=y))


def gaussian(n, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_mmd_of_identical_samples_is_zero():
    x = gaussian(200)
    assert abs(domain.mmd(two_domains(x, x.clone()))) < 1e-12


def test_mmd_grows_with_a_mean_shift():
    x, y = gaussian(200, seed=0), gaussian(200, seed=1)
    values = [domain.mmd(two_domains(x, y + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[0] < 0.1 < values[-1]


def test_kernel_sums_one_dimensional_hand_case():
    # x = {0, 1}, y = {2}, one bandwidth h = 1: k(a, b) = exp(-(a - b)^2)
    x, y = t([[0.0], [1.0]], torch.float64), t([[2.0]], torch.float64)
    kxx, kyy, kxy = domain.kernel_sums(x, y, [1.0])
    e = math.exp
    assert kxx == pytest.approx((1 + e(-1) + e(-1) + 1) / 4, abs=1e-15)
    assert kyy == pytest.approx(1.0, abs=1e-15)
    assert kxy == pytest.approx((e(-4) + e(-1)) / 2, abs=1e-15)
    assert domain.mmd2_biased(x, y, [1.0]) == pytest.approx(1.5 - 0.5 * e(-1) - e(-4), abs=1e-15)
    # two bandwidths: the kernel is the sum, so the sums add up
    kxx2, _, kxy2 = domain.kernel_sums(x, y, [1.0, 2.0])
    assert kxy2 == pytest.approx((e(-4) + e(-1) + e(-2) + e(-0.5)) / 2, abs=1e-15)
    assert kxx2 == pytest.approx((2 + 2 * e(-1) + 2 + 2 * e(-0.5)) / 4, abs=1e-15)


def test_mmd_uses_the_median_heuristic_bandwidths():
    # pooled {0, 1, 2}: squared distances of distinct pairs {1, 4, 1}, median h0 = 1;
    # MMD_b^2 with bandwidth h is 1.5 - 0.5 exp(-1/h) - exp(-4/h); the kernel sums over h in H
    x, y = t([[0.0], [1.0]], torch.float32), t([[2.0]], torch.float32)
    expected = sum(1.5 - 0.5 * math.exp(-1 / h) - math.exp(-4 / h) for h in (0.25, 0.5, 1, 2, 4))
    assert domain.mmd(two_domains(x, y)) == pytest.approx(expected, abs=1e-12)


def test_mmd_median_of_zero_falls_back_to_the_non_zero_distances():
    # pooled {0, 0, 0, 0, 1}: 6 of 10 pairs coincide (median 0); the non-zero ones are all 1
    x, y = torch.zeros(3, 1), t([[0.0], [1.0]], torch.float32)
    expected = domain.mmd2_biased(x, y, [s * 1.0 for s in domain.BANDWIDTH_SCALES])
    assert domain.mmd(two_domains(x, y)) == pytest.approx(expected, abs=1e-12)
    assert domain.mmd(two_domains(torch.ones(3, 2), torch.ones(4, 2))) == 0.0


def test_mmd_uses_the_first_1000_samples_of_each_domain():
    x, y = gaussian(1000, seed=3), gaussian(1000, seed=4) + 0.5
    base = domain.mmd(two_domains(x, y))
    padded = domain.mmd(two_domains(torch.cat([x, 100 + gaussian(300, seed=5)]), torch.cat([y, -100 + gaussian(50)])))
    assert padded == base
    x_changed = x.clone()
    x_changed[0] += 10
    assert domain.mmd(two_domains(x_changed, y)) != base


def test_mmd_without_another_domain_is_a_clear_error():
    with pytest.raises(ValueError, match="mmd"):
        domain.mmd(Collected(t([0, 1]), embeddings=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="mmd"):
        domain.mmd(Collected(t([0, 1]), embeddings=torch.zeros(2, 3), other=Collected(t([0]))))
