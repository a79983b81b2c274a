"""Associative deep clustering (adc) and the clustering baselines: k-means on embeddings
(``kmeans_accuracy``), the ``pixels`` backbone with ``steps = 0``, the loss weights, the
surrogate labels of the augmented copies, the one k-means initialisation of the centroids at the
end of the warm-up, and no true label reaching training."""
from __future__ import annotations

import dataclasses
import math
import textwrap
import tomllib

import numpy as np
import pytest
import torch
from torch import nn

from ssl_bench import UserError
from ssl_bench.backbone import Classifier
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.method import Batch, TrainContext
from ssl_bench.metric import Collected
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods import adc as adc_module
from ssl_bench_plugins.methods.adc import AssociativeDeepClustering, adc_tau
from ssl_bench_plugins.methods.association import associate
from ssl_bench_plugins.metrics.clustering import cluster_accuracy, kmeans_accuracy

CPU = torch.device("cpu")


# ------------------------------------------------------------------ k-means on embeddings
def test_kmeans_accuracy_of_separated_blobs_under_a_permutation():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.tensor([2] * 4 + [0] * 3 + [1] * 5)  # blob k holds class (k + 2) % 3
    blob = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    embeddings = centres[blob] + 0.1 * torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    assert kmeans_accuracy(Collected(labels, embeddings=embeddings)) == 100.0
    wrong = labels.clone()
    wrong[0] = 0  # one image of blob 0 labelled as blob 1's class
    assert kmeans_accuracy(Collected(wrong, embeddings=embeddings)) == pytest.approx(100.0 * 11 / 12)


def test_kmeans_accuracy_of_collapsed_embeddings_is_the_largest_class():
    labels = torch.tensor([0, 0, 0, 1, 2])
    assert kmeans_accuracy(Collected(labels, embeddings=torch.ones(5, 3))) == 60.0
    with pytest.raises(ValueError, match="needs the embeddings"):
        kmeans_accuracy(Collected(labels))


GRID = """
name = "adc_test"
[base]
dataset = "digits"
task = "clustering"
backbone = "lba_convnet"
method = "adc"
n_labeled = 0
n_unlabeled = 300
unlabeled_batch = 20
steps = 6
eval_every = 3
metrics = ["kmeans_accuracy"]
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[base.methods.adc]
warmup = 3
[axes]
seed = [0]
"""


def configs(text: str = GRID, **changes) -> list[dict]:
    doc = tomllib.loads(textwrap.dedent(text))
    doc["base"].update(changes)
    return [r.config for r in expand(parse_grid(doc), load_registry())]


def test_steps_0_is_k_means_on_pixels():
    (config,) = configs(backbone="pixels", steps=0)
    data = load_digits(None)
    outcome = train_run(config, load_registry(), data, CPU)
    assert outcome.status == "ok" and outcome.steps_done == 0
    assert [p["step"] for p in outcome.curves] == [0] and math.isnan(outcome.curves[0]["loss"])
    # the same number straight from scikit-learn on the normalised test pixels
    mean, std = data.mean[0], data.std[0]
    pixels = ((data.test_x.double() / 255 - mean) / std).reshape(len(data.test_x), -1)
    expected = kmeans_accuracy(Collected(data.test_y, embeddings=pixels))
    assert outcome.metrics["test_kmeans_accuracy"] == pytest.approx(expected)
    assert 60.0 < expected < 95.0


# ------------------------------------------------------------------ the objective, by hand
class Flat(nn.Module):
    embedding_dim = 4

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


def setup(step: int, **hparams):
    torch.manual_seed(0)
    method = AssociativeDeepClustering(warmup=5, **hparams)
    model = Classifier(Flat(), 3)
    model.extras.update(method.build_modules(model, 3))
    plain = torch.randn(5, 4)
    copies = [plain + 0.1 * torch.randn(5, 4) for _ in range(4)]
    batch = Batch(None, None, plain, views={"unlabeled": copies})
    ctx = TrainContext(step=step, steps=10, num_classes=3, device=CPU, data=None,
                       generator=torch.Generator().manual_seed(0))
    return method, model, batch, ctx


def test_warm_up_has_only_the_augmentation_association_and_the_norm():
    method, model, batch, ctx = setup(step=4)
    terms = method.loss_terms(batch, model, ctx)
    assert set(terms) == {"assoc_aug", "norm"}
    # the 4 copies of image i all carry surrogate label i; A = copies, B = plain images
    z_plain = model.embed(batch.x_unlabeled)
    z_aug = model.embed(torch.cat(batch.views["unlabeled"]))
    labels = torch.tensor([0, 1, 2, 3, 4] * 4)
    expected = associate(z_aug, z_plain, labels)
    assert terms["assoc_aug"].item() == pytest.approx(0.9 * (expected.walker_loss + 0.3 * expected.visit_loss).item(),
                                                      rel=1e-5)
    vectors = torch.cat([z_plain, z_aug])
    assert terms["norm"].item() == pytest.approx(1e-5 * ((vectors.norm(dim=1) - 1) ** 2).sum().item(), rel=1e-5)


def test_after_the_warm_up_every_term_with_its_weight():
    method, model, batch, ctx = setup(step=5)
    terms = method.loss_terms(batch, model, ctx)
    assert set(terms) == {"assoc_aug", "norm", "assoc_c", "classification", "trafo"}
    centroids = model.extras["centroids"].weight
    z_plain = model.embed(batch.x_unlabeled)
    expected_c = associate(centroids, z_plain, torch.arange(3))
    assert terms["assoc_c"].item() == pytest.approx((expected_c.walker_loss + 0.3 * expected_c.visit_loss).item(),
                                                    rel=1e-5)
    assert terms["classification"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(model.head(centroids), torch.arange(3)).item(), rel=1e-5)
    # L_trafo by a double loop over the pairs (eq. 4)
    z_tau = model.embed(batch.views["unlabeled"][0])
    p, log_q = model.head(z_plain).softmax(1), model.head(z_tau).log_softmax(1)
    pairs = [abs(1 - z_plain[i] @ z_tau[j] + (p[i] * log_q[j]).sum()).item() for i in range(5) for j in range(5)]
    assert terms["trafo"].item() == pytest.approx(2e-5 * sum(pairs) / 25, rel=1e-4)
    # each weight scales its own term only
    doubled = dict(alpha=2.0, beta=1.8, gamma=2e-5, delta=4e-5, classification_weight=2.0)
    method2, model2, batch2, ctx2 = setup(step=5, **doubled)
    terms2 = method2.loss_terms(batch2, model2, ctx2)
    for name in terms:
        assert terms2[name].item() == pytest.approx(2 * terms[name].item(), rel=1e-5), name


def test_zero_weights_leave_their_terms_out_and_all_zero_is_an_error():
    method, model, batch, ctx = setup(step=5, delta=0.0, alpha=0.0)
    assert set(method.loss_terms(batch, model, ctx)) == {"assoc_aug", "norm", "classification"}
    with pytest.raises(UserError, match="every loss weight is 0"):
        AssociativeDeepClustering(alpha=0, beta=0, gamma=0, delta=0, classification_weight=0)


def test_tau_is_seeded_and_keeps_the_range():
    x = torch.rand(6, 3, 12, 12)
    a = adc_tau(x, torch.Generator().manual_seed(3))
    b = adc_tau(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, adc_tau(x, torch.Generator().manual_seed(4)))


# ------------------------------------------------------------------ the schedule
def test_centroids_are_set_by_k_means_once_at_the_end_of_the_warm_up(monkeypatch):
    calls = []

    def fake_kmeans(embeddings, k, seed):
        calls.append((embeddings.shape, k))
        return np.full((k, embeddings.shape[1]), 0.5)

    seen = {}
    original = AssociativeDeepClustering.loss_terms

    def spy(self, batch, model, ctx):
        seen[ctx.step] = model.extras["centroids"].weight.detach().clone()
        return original(self, batch, model, ctx)

    monkeypatch.setattr(adc_module, "kmeans_centres", fake_kmeans)
    monkeypatch.setattr(AssociativeDeepClustering, "loss_terms", spy)
    (config,) = configs()
    outcome = train_run(config, load_registry(), load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error
    assert calls == [((300, 8), 10)]  # once, on the embeddings of the 300 unlabeled images
    assert not torch.equal(seen[2], torch.full_like(seen[2], 0.5))
    assert torch.equal(seen[3], torch.full_like(seen[3], 0.5))  # set just before step 3 (= warmup)
    # evaluated after steps 0-2 (not yet) and after steps 3-5
    assert [dict(p["metrics"])["centroids_initialised_at"] for p in outcome.curves] == [-1.0, 3.0]


def test_no_true_label_reaches_training():
    """The same images under permuted labels train bit for bit the same network."""
    (config,) = configs()
    data = load_digits(None)
    rng = np.random.default_rng(0)
    shuffled = dataclasses.replace(data, train_y=torch.as_tensor(rng.permutation(data.train_y.numpy())))
    a = train_run(config, load_registry(), data, CPU)
    b = train_run(config, load_registry(), shuffled, CPU)
    assert a.status == b.status == "ok"
    assert [p["loss"] for p in a.curves] == [p["loss"] for p in b.curves]
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    # the evaluation does read the labels: the train-set accuracy differs
    assert a.metrics["train_cluster_accuracy"] != b.metrics["train_cluster_accuracy"]


def test_cluster_accuracy_still_matches_its_definition():
    labels, clusters = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([5, 5, 7, 7, 7])
    assert cluster_accuracy(Collected(labels, predictions=clusters)) == 80.0
