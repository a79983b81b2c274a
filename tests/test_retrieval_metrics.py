"""precision_at_1, map_at_r (plugins/metrics/retrieval.py) and kmeans_nmi
(plugins/metrics/clustering.py): hand-computed cases, the protocol (query excluded, chunking),
and agreement with pytorch-metric-learning's AccuracyCalculator (the test extra)."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_bench.metric import Collected
from ssl_bench_plugins.metrics import clustering, retrieval


def by_name(module):
    return {m.name: m for m in module.ssl_bench_metrics()}


def on_circle(degrees, norms=None):
    """2-D embeddings at the given angles; cosine similarity ranks neighbours by angle gap."""
    a = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    emb = torch.stack([a.cos(), a.sin()], dim=1)
    if norms is not None:
        emb = emb * torch.tensor(norms, dtype=torch.float64)[:, None]  # normalisation must undo this
    return emb


#: six points; within each query's row the angle gaps are all distinct (no ties)
ANGLES = [0, 10, 25, 45, 60, 100]
NORMS = [1.0, 3.0, 0.5, 2.0, 7.0, 0.1]


def test_hand_case_two_classes():
    # labels a a b a b b at 0, 10, 25, 45, 60, 100 degrees; R = 2 for every query.
    # query (class): the two nearest others -> rel, AP@R, nearest is a hit?
    #   0 (a): 10 a, 25 b   -> [1, 0], AP = (1/2)(1)        = 1/2, hit
    #  10 (a):  0 a, 25 b   -> [1, 0], AP = 1/2,                  hit
    #  25 (b): 10 a, 45 a   -> [0, 0], AP = 0,                    miss
    #  45 (a): 60 b, 25 b   -> [0, 0], AP = 0,                    miss
    #  60 (b): 45 a, 25 b   -> [0, 1], AP = (1/2)(P(2) = 1/2) = 1/4, miss
    # 100 (b): 60 b, 45 a   -> [1, 0], AP = 1/2,                  hit
    c = Collected(torch.tensor([0, 0, 1, 0, 1, 1]), embeddings=on_circle(ANGLES, NORMS))
    assert retrieval.precision_at_1(c) == 50.0
    assert retrieval.map_at_r(c) == pytest.approx(100.0 * (0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6, rel=1e-12)
    assert retrieval.precision_at_1(c) == retrieval.recall_at_k(c, 1)


def test_hand_case_with_a_lone_query_skipped_by_map_at_r():
    # labels a a a b b c: R = 2, 2, 2, 1, 1, 0 (the c query is skipped by MAP@R)
    #   0 (a): 10 a, 25 a   -> [1, 1], AP = (1/2)(1 + 1)   = 1, hit
    #  10 (a):  0 a, 25 a   -> [1, 1], AP = 1,                hit
    #  25 (a): 10 a, 45 b   -> [1, 0], AP = (1/2)(1)       = 1/2, hit
    #  45 (b): 60 b         -> [1],    AP = 1,                hit
    #  60 (b): 45 b         -> [1],    AP = 1,                hit
    # 100 (c): no class mate: skipped by MAP@R; for P@1 a miss (nearest is 60, b)
    c = Collected(torch.tensor([0, 0, 0, 1, 1, 2]), embeddings=on_circle(ANGLES, NORMS))
    assert retrieval.map_at_r(c) == pytest.approx(100.0 * 4.5 / 5, rel=1e-12)
    assert retrieval.precision_at_1(c) == pytest.approx(100.0 * 5 / 6, rel=1e-12)
    assert retrieval.precision_at_1(c) == retrieval.recall_at_k(c, 1)


def test_map_at_r_is_100_for_separated_classes_and_nan_without_class_mates():
    emb = on_circle([0, 1, 2, 90, 91, 92, 93, 180, 181])
    labels = torch.tensor([5, 5, 5, 2, 2, 2, 2, 7, 7])
    c = Collected(labels, embeddings=emb)
    assert retrieval.map_at_r(c) == 100.0
    assert retrieval.precision_at_1(c) == 100.0
    distinct = Collected(torch.arange(9), embeddings=emb)
    assert math.isnan(retrieval.map_at_r(distinct))
    assert retrieval.precision_at_1(distinct) == 0.0


def test_edge_cases_and_errors():
    one = Collected(torch.tensor([0]), embeddings=torch.ones(1, 2))
    assert math.isnan(retrieval.precision_at_1(one)) and math.isnan(retrieval.map_at_r(one))
    for f, name in ((retrieval.precision_at_1, "precision_at_1"), (retrieval.map_at_r, "map_at_r")):
        with pytest.raises(ValueError, match=f"'{name}' needs the embeddings"):
            f(Collected(torch.tensor([0, 1])))
        with pytest.raises(ValueError, match="do not match"):
            f(Collected(torch.tensor([0, 1]), embeddings=torch.ones(3, 2)))
        with pytest.raises(ValueError, match="chunk_size must be positive"):
            f(Collected(torch.tensor([0, 1]), embeddings=torch.ones(2, 2)), chunk_size=0)


# --- the protocol ------------------------------------------------------------------------------

def clustered(n_per_class=(2, 3, 5, 8, 13, 4, 6, 2, 9, 7), d=8, spread=0.9, seed=0, dtype=torch.float32):
    """Random clustered embeddings: class centres N(0, I), images centre + spread * N(0, I);
    classes of unequal sizes, shuffled order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), d, generator=g, dtype=torch.float64)
    labels = torch.cat([torch.full((m,), c, dtype=torch.int64) for c, m in enumerate(n_per_class)])
    emb = centres[labels] + spread * torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    order = torch.randperm(len(labels), generator=g)
    return Collected(labels[order], embeddings=emb[order].to(dtype))


def test_the_query_never_retrieves_itself(monkeypatch):
    c = clustered(seed=3)
    n, chunk = len(c.labels), 7
    retrieved = []
    real_topk = torch.Tensor.topk

    def spy(self, *args, **kwargs):
        out = real_topk(self, *args, **kwargs)
        retrieved.append(out.indices)
        return out

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    for metric in (retrieval.precision_at_1, retrieval.map_at_r):
        retrieved.clear()
        metric(c, chunk_size=chunk)
        assert sum(len(ix) for ix in retrieved) == n  # one topk per chunk, every query in one
        for start, ix in zip(range(0, n, chunk), retrieved):
            assert not (ix == (start + torch.arange(len(ix)))[:, None]).any()
    # a duplicate of the query (same label) is its nearest other image, the query itself is not
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    dup = Collected(torch.tensor([0, 0, 1, 1]), embeddings=emb)
    # 0 -> 1 (a), 1 -> 0 (a), 2 -> 3 (b), 3 -> 2 (b, 0.8 > 0.6)
    assert retrieval.precision_at_1(dup) == 100.0 and retrieval.map_at_r(dup) == 100.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunk_sizes_smaller_than_n_give_the_same_numbers(dtype):
    c = clustered(seed=1, dtype=dtype)
    n = len(c.labels)
    p1, mapr = retrieval.precision_at_1(c), retrieval.map_at_r(c)
    assert 0.0 < mapr < 100.0 and 0.0 < p1 < 100.0
    for chunk_size in (1, 2, 7, n - 1, n, 10 * n):
        assert retrieval.precision_at_1(c, chunk_size=chunk_size) == p1
        assert retrieval.map_at_r(c, chunk_size=chunk_size) == pytest.approx(mapr, abs=1e-12)


def test_precision_at_1_is_recall_at_1():
    for seed in range(5):
        c = clustered(seed=seed, spread=1.5)
        assert retrieval.precision_at_1(c) == retrieval.recall_at_k(c, 1)
        assert retrieval.precision_at_1(c, chunk_size=5) == retrieval.recall_at_k(c, 1, chunk_size=17)


def test_hooks_and_module_default_chunk_size(monkeypatch):
    metrics = by_name(retrieval)
    for name in ("precision_at_1", "map_at_r"):
        assert metrics[name].higher_is_better and not metrics[name].is_family
        assert tuple(metrics[name].needs) == ("embeddings",) and metrics[name].help
    assert by_name(clustering)["kmeans_nmi"].higher_is_better
    assert tuple(by_name(clustering)["kmeans_nmi"].needs) == ("embeddings",)
    c = clustered(seed=4)
    expected = retrieval.precision_at_1(c), retrieval.map_at_r(c)
    monkeypatch.setattr(retrieval, "CHUNK_SIZE", 3)
    calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, *a, **kw: calls.append(len(self)) or real_topk(self, *a, **kw))
    assert metrics["precision_at_1"].compute(c) == expected[0]
    assert metrics["map_at_r"].compute(c) == pytest.approx(expected[1], abs=1e-12)
    n = len(c.labels)
    assert calls == 2 * ([3] * (n // 3) + ([n % 3] if n % 3 else []))


# --- agreement with pytorch-metric-learning ----------------------------------------------------

def library_accuracy(c: Collected) -> dict[str, float]:
    """pytorch-metric-learning 2.x: query = reference (ref_includes_query: the self-match is
    removed), k = "max_bin_count", k-NN by CosineSimilarity through CustomKNN (no faiss)."""
    pml_acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.inference import CustomKNN

    calculator = pml_acc.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                                            k="max_bin_count", device=torch.device("cpu"),
                                            knn_func=CustomKNN(CosineSimilarity()))
    return calculator.get_accuracy(c.embeddings, c.labels, c.embeddings, c.labels, ref_includes_query=True)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_pytorch_metric_learning(seed):
    c = clustered(n_per_class=(2, 3, 5, 8, 13, 4, 6, 2, 9, 7, 11, 3), d=6, spread=1.0 + 0.3 * seed, seed=10 + seed)
    lib = library_accuracy(c)
    assert 100.0 * lib["precision_at_1"] == pytest.approx(retrieval.precision_at_1(c), abs=1e-6)
    assert 100.0 * lib["mean_average_precision_at_r"] == pytest.approx(retrieval.map_at_r(c), abs=1e-6)
    assert 100.0 * lib["mean_average_precision_at_r"] == pytest.approx(retrieval.map_at_r(c, chunk_size=4), abs=1e-6)


def test_lone_queries_against_pytorch_metric_learning():
    # MAP@R skips lone queries in both; the library's P@1 drops them too, ours counts them as
    # misses (it is recall@1): ours * N == library * (N - #lone).
    c = clustered(n_per_class=(1, 4, 1, 6, 5, 1, 3), d=5, spread=1.2, seed=7)
    n, lone = len(c.labels), 3
    lib = library_accuracy(c)
    assert 100.0 * lib["mean_average_precision_at_r"] == pytest.approx(retrieval.map_at_r(c), abs=1e-6)
    assert retrieval.precision_at_1(c) * n == pytest.approx(100.0 * lib["precision_at_1"] * (n - lone), abs=1e-6)


# --- kmeans_nmi --------------------------------------------------------------------------------

def blobs(labels, d=3, scale=20.0, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = scale * torch.randn(int(labels.max()) + 1, d, generator=g)
    return centres[labels] + spread * torch.randn(len(labels), d, generator=g)


def test_kmeans_nmi_is_1_on_separated_blobs_under_a_label_permutation():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3])
    emb = blobs(labels)
    assert clustering.kmeans_nmi(Collected(labels, embeddings=emb)) == pytest.approx(1.0, abs=1e-12)
    permuted = torch.tensor([2, 3, 0, 1])[labels]  # renamed classes: the same partition
    assert clustering.kmeans_nmi(Collected(permuted, embeddings=emb)) == pytest.approx(1.0, abs=1e-12)
    assert by_name(clustering)["kmeans_nmi"].compute(Collected(permuted, embeddings=emb)) == pytest.approx(1.0)


def test_kmeans_nmi_is_sklearn_nmi_of_the_seeded_kmeans_clusters():
    from sklearn.metrics import normalized_mutual_info_score

    labels = torch.randint(0, 5, (80,), generator=torch.Generator().manual_seed(1))
    emb = blobs(labels, d=4, scale=1.0, spread=0.8, seed=2)
    c = Collected(labels, embeddings=emb)
    value = clustering.kmeans_nmi(c)
    clusters = clustering.kmeans_clusters(emb.to(torch.float64).numpy(), 5)
    assert value == normalized_mutual_info_score(labels.numpy(), clusters, average_method="arithmetic")
    assert 0.0 < value < 1.0
    assert clustering.kmeans_nmi(c) == value  # seeded
    # the same clusters give kmeans_accuracy
    table = clustering.contingency(labels.numpy(), clusters)
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(table, maximize=True)
    assert clustering.kmeans_accuracy(c) == 100.0 * int(table[rows, cols].sum()) / 80


def test_kmeans_nmi_edge_cases():
    assert math.isnan(clustering.kmeans_nmi(Collected(torch.zeros(0, dtype=torch.int64), embeddings=torch.zeros(0, 2))))
    with pytest.raises(ValueError, match="'kmeans_nmi' needs the embeddings"):
        clustering.kmeans_nmi(Collected(torch.tensor([0, 1])))
    # collapsed embeddings: one cluster, no information about the classes
    assert clustering.kmeans_nmi(Collected(torch.tensor([0, 0, 1, 1, 2]), embeddings=torch.ones(5, 3))) == 0.0
