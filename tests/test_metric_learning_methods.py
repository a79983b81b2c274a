"""The deep-metric-learning methods (seed 003 ch. 4-5): ms_supervised, ms_baseline, tac_ccl, san,
san_unsupervised; their building blocks by hand (eq. 4.2 on a flip, eq. 4.3, Sinkhorn, eqs.
5.5-5.8), the k-means refresh schedule, unsupervised runs with n_labeled = 0 that never read a
true label, the method's embedding path in the retrieval metrics, and the backbones' feature
maps and pretrained weights."""
from __future__ import annotations

import dataclasses
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_bench import UserError, create_model
from ssl_bench.data import RunLabels
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, load_grid
from ssl_bench.registry import load_registry
from ssl_bench.runner import prepare
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.clusters import embed_images
from ssl_bench_plugins.methods.san import correlation, entropy_bits, local_coherence, sinkhorn, SpatialAssembly
from ssl_bench_plugins.methods.tac_ccl import (cluster_partners, contrastive_clustering, matched_masks, random_affine,
                                               tac_loss, warp)

from conftest import write_grid

CPU = torch.device("cpu")
FLIP = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])

GRID = """
[base]
task = "retrieval"
dataset = "digits"
backbone = "lba_convnet"
method = "ms_baseline"
n_labeled = 0
n_unlabeled = "all"
steps = 12
eval_every = 6
sampler = "p_k"
labeled_per_class = 4
classes_per_batch = 4
unlabeled_batch = 0
metrics = ["recall@1", "recall@2"]
[base.backbones.lba_convnet]
widths = [8, 16]
embedding_dim = 16
[base.methods.ms_baseline]
clusters = 6
recluster_every = 5
memory_size = 64
[base.methods.tac_ccl]
clusters = 6
memory_size = 64
cross_weight = 1.0
[base.methods.san_unsupervised]
clusters = 6
[base.methods.san]
memory_size = 64
"""


@pytest.fixture(scope="module")
def reg():
    return load_registry()


@pytest.fixture(scope="module")
def digits():
    return load_digits(None)


def with_method(reg, tmp_path, method: str, n_labeled="0"):
    text = GRID.replace('method = "ms_baseline"', f'method = "{method}"').replace("n_labeled = 0",
                                                                                  f"n_labeled = {n_labeled}")
    (run,) = expand(load_grid(write_grid(tmp_path, text)), reg)
    return run.config


# --------------------------------------------------------------------------- TAC-CCL by hand
def test_embed_images_embeds_in_eval_mode_chunk_by_chunk_and_restores_the_mode():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    images = torch.randint(0, 256, (10, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    normalise = lambda x: x.float() / 255
    z = embed_images(net, images, normalise, embed=net, chunk=3)
    assert net.training and torch.equal(net[1].running_mean, torch.zeros(3))  # statistics untouched
    assert z.dtype == torch.float32 and torch.allclose(z, net.eval()(normalise(images)), atol=1e-6)

    def broken(x):
        raise RuntimeError("out of memory")

    net.train()
    with pytest.raises(RuntimeError, match="out of memory"):
        embed_images(net, images, normalise, embed=broken)
    assert net.training


def test_cluster_ids_are_counted_but_not_scored_as_classes():
    labels = RunLabels(torch.tensor([0, -1, -1, -1]), truth=torch.tensor([0, 1, 1, 0]))
    labels.assign(torch.tensor([1, 2]), torch.tensor([1, 0]))
    stats = labels.diagnostics()
    assert stats["labels_assigned"].item() == 2 and stats["labels_assigned_accuracy"].item() == 50.0
    labels.assign(torch.tensor([3]), torch.tensor([5]), classes=False)
    stats = labels.diagnostics()
    assert stats["labels_assigned"].item() == 3 and "labels_assigned_accuracy" not in stats
    labels.reset()  # the cluster ids are gone: class labels are scored again
    labels.assign(torch.tensor([1]), torch.tensor([1]))
    assert labels.diagnostics()["labels_assigned_accuracy"].item() == 100.0


def test_tac_loss_is_zero_for_a_flipped_map_and_the_sum_of_squares_otherwise():
    m = torch.arange(12.0).reshape(1, 1, 3, 4) / 12
    flipped = m.flip(-1)
    assert torch.allclose(warp(m, FLIP), flipped, atol=1e-6)  # T = horizontal flip, exactly
    assert tac_loss(m, flipped, FLIP).item() == pytest.approx(0.0, abs=1e-10)
    # M' = M although T flips: eq. 4.2 sums |M(T(u)) - M'(u)|^2 over every position
    expected = ((flipped - m) ** 2).sum().item()
    assert tac_loss(m, m, FLIP).item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_tac_loss_ignores_positions_mapped_outside_the_map():
    m = torch.rand(2, 1, 4, 4)
    shift = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]]).repeat(2, 1, 1)  # half the width to the left
    target = warp(m, shift)
    # the right quarter of T(M) comes from outside: any M' there does not count
    other = target.clone()
    other[..., 3:] = 5.0
    assert tac_loss(m, other, shift).item() == pytest.approx(0.0, abs=1e-10)


def test_random_transforms_are_seeded_and_within_their_ranges():
    g = torch.Generator().manual_seed(0)
    a = random_affine(500, g, "cpu", rotation=15.0, zoom=0.8)
    b = random_affine(500, torch.Generator().manual_seed(0), "cpu", rotation=15.0, zoom=0.8)
    assert torch.equal(a, b) and a.shape == (500, 2, 3)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]  # flip sign times s^2
    assert ((det.abs() >= 0.64 - 1e-6) & (det.abs() <= 1 + 1e-6)).all()
    assert (det < 0).any() and (det > 0).any()  # both flipped and unflipped
    assert (a[:, :, 2].abs() <= 0.2 + 1e-6).all()  # the crop stays inside the image


def test_contrastive_clustering_is_the_mean_ratio_of_nearest_to_second_nearest():
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # (1 / 3 + 1 / 3) / 2: each point is 1 from its centre and 3 from the other
    assert contrastive_clustering(z, centres).item() == pytest.approx(1 / 3)


def test_cross_image_partners_and_masks():
    labels = torch.tensor([2, 0, 2, 0, 2, 7])
    partner = cluster_partners(labels)
    assert partner.tolist() == [2, 3, 4, 1, 0, 5]  # within each class, cyclically; a lone image: itself
    f = torch.zeros(1, 2, 3, 3)
    f[0, 0, 0, 0] = f[0, 1, 2, 2] = 1.0  # two distinctive positions, swapped in the other image
    g = torch.zeros(1, 2, 3, 3)
    g[0, 0, 2, 2] = g[0, 1, 0, 0] = 1.0
    gamma, gamma_other = matched_masks(f, g, matches=1, sigma=0.5)
    # one keypoint pair: a Gaussian around (0, 0) in f and (2, 2) in g, or the other way round
    assert gamma.shape == (1, 1, 3, 3) and gamma.max().item() == pytest.approx(1.0)
    assert torch.allclose(gamma.flip(-1).flip(-2), gamma_other)


# --------------------------------------------------------------------------- SAN by hand
def test_sinkhorn_rows_and_columns_sum_to_one():
    logits = torch.randn(3, 16, 16) * 2
    w = sinkhorn(logits, iterations=30)
    assert (w > 0).all()
    assert torch.allclose(w.sum(1), torch.ones(3, 16), atol=1e-6)  # columns: exactly after the last step
    assert torch.allclose(w.sum(2), torch.ones(3, 16), atol=1e-3)  # rows: to the iterations' accuracy


def test_assembly_starts_near_the_identity_and_permutes_features():
    layer = SpatialAssembly(channels=4, height=2, width=3, hidden=8, identity_prior=5.0, iterations=20)
    f = torch.randn(2, 4, 2, 3)
    g, w = layer(f)
    expected_diagonal = math.exp(5) / (math.exp(5) + 5)  # 6 positions: the prior vs 5 zero logits
    assert torch.allclose(torch.diagonal(w, dim1=1, dim2=2), torch.full((2, 6), expected_diagonal), atol=1e-5)
    # eq. 5.4 with an exact permutation: G(v) = F(P(v))
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    p = torch.zeros(1, 6, 6)
    p[0, perm, torch.arange(6)] = 1.0  # w(u, v) = 1 where u = P(v)
    moved = torch.einsum("buv,bcu->bcv", p, f[:1].flatten(2))
    assert torch.equal(moved, f[:1].flatten(2)[:, :, perm])


def test_entropy_and_correlation_of_a_permutation_and_of_uniform_weights():
    n = 9
    perm = torch.eye(n)[torch.randperm(n)][None]
    uniform = torch.full((1, n, n), 1 / n)
    assert entropy_bits(perm).item() == pytest.approx(0.0, abs=1e-6)
    assert correlation(perm).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_bits(uniform).item() == pytest.approx(2 * math.log2(n))
    # per column: 1 - n (1/n)^2 = 1 - 1/n, the same per row
    assert correlation(uniform).item() == pytest.approx(2 * (1 - 1 / n))


def test_local_coherence_is_zero_for_the_identity_and_positive_for_a_scramble():
    h = w = 3
    f = torch.ones(1, 2, h, w)  # every neighbour pair fully coherent: alpha = 1
    identity = torch.eye(h * w)[None]
    assert local_coherence(identity, f).item() == pytest.approx(0.0, abs=1e-7)
    scramble = torch.eye(h * w)[[4, 0, 8, 2, 6, 1, 3, 7, 5]][None]
    assert local_coherence(scramble, f).item() > 0.5
    # alpha weighs each pair by the features' cosine: orthogonal neighbours cost nothing
    checker = torch.zeros(1, 2, h, w)
    checker[0, 0] = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    checker[0, 1] = 1 - checker[0, 0]
    horizontal_and_vertical_only = local_coherence(scramble, checker)
    assert 0 < horizontal_and_vertical_only.item() < local_coherence(scramble, f).item()


# --------------------------------------------------------------------------- runs
def test_kmeans_pseudo_labels_are_refreshed_on_schedule_and_empty_the_memory(reg, tmp_path, digits, monkeypatch):
    from ssl_bench_plugins.methods import ms_baseline, multi_similarity

    refreshes, resets = [], []
    relabel = ms_baseline.KMeansPseudoLabels.relabel
    forget = multi_similarity.MultiSimilarity.forget

    def spy_relabel(self, model, ctx):
        relabel(self, model, ctx)
        labeled = ctx.labels.labeled()
        refreshes.append((ctx.step, len(labeled), int(ctx.labels.current[labeled].max()) + 1))

    def spy_forget(self):
        resets.append(len(self.memory.embedding_memory) if self.memory is not None else None)
        forget(self)

    monkeypatch.setattr(ms_baseline.KMeansPseudoLabels, "relabel", spy_relabel)
    monkeypatch.setattr(multi_similarity.MultiSimilarity, "forget", spy_forget)
    outcome = train_run(with_method(reg, tmp_path, "ms_baseline"), reg, {"source": digits}, CPU)
    assert outcome.status == "ok", outcome.error
    train_images = int(np.isin(digits.train_y.numpy(), [0, 1, 2, 3, 4]).sum())
    # at the start and every 5 steps of 12; each time every training-class image gets one of 6 clusters
    assert [s for s, _, _ in refreshes] == [0, 5, 10]
    assert all(n == train_images and k == 6 for _, n, k in refreshes)
    assert len(resets) == 3
    assert 0 <= outcome.metrics["pseudo_label_nmi"] <= 1  # the result column of the clusters' quality
    # cluster ids are counted but never scored against the classes (cluster 3 is not class 3)
    point = outcome.curves[-1]["metrics"]
    assert point["labels_assigned"] > 0 and "labels_assigned_accuracy" not in point


def test_unsupervised_runs_read_no_true_label(reg, tmp_path, digits):
    """Permuting the labels among the training classes' images changes nothing in training."""
    cfg = with_method(reg, tmp_path, "tac_ccl")
    y = digits.train_y.numpy().copy()
    train = np.flatnonzero(y < 5)
    y[train] = np.random.default_rng(0).permutation(y[train])
    shuffled = dataclasses.replace(digits, train_y=torch.as_tensor(y))
    a = train_run(cfg, reg, {"source": digits}, CPU)
    b = train_run(cfg, reg, {"source": shuffled}, CPU)
    assert a.status == b.status == "ok", (a.error, b.error)
    assert [p["loss"] for p in a.curves] == [p["loss"] for p in b.curves]
    for (name, x), (_, z) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, z), name
    assert a.metrics["pseudo_label_nmi"] != b.metrics["pseudo_label_nmi"]  # the diagnostic does read them


def test_recall_is_computed_on_the_methods_embedding_path(reg, tmp_path, digits):
    """tac_ccl's embeddings pass its attention module; the row's Recall@1 is theirs."""
    cfg = with_method(reg, tmp_path, "tac_ccl")
    outcome = train_run(cfg, reg, {"source": digits}, CPU)
    assert outcome.status == "ok", outcome.error
    model = outcome.model.eval()
    held_out = np.isin(digits.test_y.numpy(), [5, 6, 7, 8, 9])
    method = reg.method("tac_ccl")(**cfg["methods"]["tac_ccl"])
    normalise = lambda x: ((x.float() / 255) - digits.mean[0]) / digits.std[0]
    with torch.no_grad():
        z = F.normalize(embed_images(model, digits.test_x[held_out], normalise,
                                     embed=lambda x: method.embed(model, x)), dim=1)
        plain = F.normalize(model.embed(normalise(digits.test_x[held_out])), dim=1)
    assert not torch.allclose(z, plain)

    def recall_at_1(e):
        sim = e @ e.T
        sim.fill_diagonal_(-math.inf)
        y = digits.test_y[held_out]
        return 100.0 * (y[sim.argmax(1)] == y).double().mean().item()

    assert outcome.metrics["test_recall@1"] == pytest.approx(recall_at_1(z))


@pytest.mark.parametrize("method,n_labeled", [("ms_supervised", '"all"'), ("san", '"all"'),
                                              ("san_unsupervised", "0")])
def test_supervised_and_san_runs_train_and_are_deterministic(reg, tmp_path, digits, method, n_labeled):
    cfg = with_method(reg, tmp_path, method, n_labeled)
    a = train_run(cfg, reg, {"source": digits}, CPU)
    b = train_run(cfg, reg, {"source": digits}, CPU)
    assert a.status == "ok", a.error
    assert [p["loss"] for p in a.curves] == [p["loss"] for p in b.curves]
    assert math.isfinite(a.metrics["test_recall@1"])
    if method.startswith("san"):
        assert "assembly" in a.model.extras


def test_label_sources_are_checked_when_the_grid_is_read(reg, tmp_path):
    # a supervised method with no labeled sample
    with pytest.raises(UserError, match="method ms_supervised trains on the labeled samples the task gives, but "
                                        "n_labeled = 0 gives none"):
        with_method(reg, tmp_path, "ms_supervised", "0")
    # an unsupervised one asks for more clusters than there are images: one clear error before training
    text = GRID.replace("clusters = 6\nrecluster_every", "clusters = 5000\nrecluster_every")
    with pytest.raises(UserError, match="k-means into 5000 clusters needs at least as many unlabeled images"):
        prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path)


def test_feature_maps_of_a_backbone_without_them_are_one_clear_error(reg, tmp_path):
    text = GRID.replace('method = "ms_baseline"', 'method = "tac_ccl"').replace(
        'backbone = "lba_convnet"', 'backbone = "pixels"')
    with pytest.raises(UserError, match="exposes no feature maps"):
        prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path)


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name,points,dim", [("googlenet", ("inception_3b", "inception_4e", "inception_5b"), 512),
                                             ("resnet18", ("layer1", "layer2", "layer3", "layer4"), 128)])
def test_metric_learning_backbones_split_into_feature_maps(reg, name, points, dim):
    torch.manual_seed(0)
    model = create_model(name, (1, 64, 64), 5, registry=reg).eval()
    assert model.feature_points == points and model.embedding_dim == dim
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for point in points:  # to any stage and back: the same embedding
            assert torch.allclose(model.embed_map(model.feature_map(x, point), point), model.embed(x), atol=1e-5)
    assert model.feature_shape("")[0] == (1024 if name == "googlenet" else 512)


def test_googlenet_takes_torchvisions_imagenet_file_into_its_trunk(reg, tmp_path):
    from torchvision.models import googlenet

    torch.manual_seed(1)
    imagenet = googlenet(weights=None, aux_logits=True, init_weights=True)  # the released file has aux heads
    path = tmp_path / "googlenet-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("googlenet", (3, 64, 64), 5, registry=reg, pretrained=path)
    assert torch.equal(model.backbone.trunk.inception5b.branch1.conv.weight, imagenet.inception5b.branch1.conv.weight)
    broken = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("inception5b.")}
    torch.save(broken, path)
    with pytest.raises(UserError, match="does not fit the backbone's trunk: missing"):
        create_model("googlenet", (3, 64, 64), 5, registry=reg, pretrained=path)


def test_a_run_says_when_googlenet_weights_are_random(reg, tmp_path):
    notes = []
    text = GRID.replace('backbone = "lba_convnet"', 'backbone = "googlenet"').replace("steps = 12", "steps = 1")
    prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path, warn=notes.append)
    assert any("googlenet starts from RANDOM weights" in n and "googlenet-1378be20.pth" in n for n in notes)


# ------------------------------------------------------------------ the affine-SIFT matcher (eq. 4.6)
def textured_image(seed: int = 0, size: int = 96) -> np.ndarray:
    """A grey image with blobs and edges at random places: SIFT finds keypoints on it."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    for _ in range(25):
        centre = tuple(int(v) for v in rng.integers(8, size - 8, 2))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(2, 7)), int(rng.integers(80, 256)), -1)
        else:
            corner = tuple(int(v) for v in np.add(centre, rng.integers(3, 10, 2)))
            cv2.rectangle(image, centre, corner, int(rng.integers(80, 256)), -1)
    return cv2.GaussianBlur(image, (3, 3), 0.8)


def test_asift_matches_follow_a_known_rotation():
    cv2 = pytest.importorskip("cv2", reason="the asift matcher's optional dependency")  # in the test extra
    image = textured_image()
    rotation = cv2.getRotationMatrix2D((47.5, 47.5), 25.0, 1.0)  # about the image centre, pixel coordinates
    rotated = cv2.warpAffine(image, rotation, (96, 96))
    from ssl_bench_plugins.methods.tac_ccl import asift_features, match_keypoints

    a, b = asift_features(image), asift_features(rotated)
    assert len(a[0]) > 20 and a[1].shape == (len(a[0]), 128)
    pa, pb = match_keypoints(a, b, matches=10)
    assert len(pa) == 10
    predicted = pa @ rotation[:, :2].T + rotation[:, 2]
    error = np.linalg.norm(predicted - pb, axis=1)
    assert np.median(error) < 1.5 and (error < 3).mean() >= 0.8, error
    assert match_keypoints(a, (b[0][:0], b[1][:0]), 10)[0].shape == (0, 2)  # nothing to match: no pair


def test_asift_masks_put_each_match_on_its_cell():
    from ssl_bench_plugins.methods.tac_ccl import TACCCL

    method = TACCCL(matches=2, sigma=1.0)
    e1, e2, e3 = np.eye(128, dtype=np.float32)[:3] * 10
    # one shared keypoint: at pixel (x 5.5, y 9.5) in image 0, (x 25.5, y 29.5) in image 1; each image also has a
    # keypoint as far from both of the other's (an ambiguous match, which Lowe's ratio test drops)
    method.keypoints = {0: (np.array([[5.5, 9.5], [30.0, 30.0]], np.float32), np.stack([e1, e3])),
                        1: (np.array([[25.5, 29.5], [0.0, 0.0]], np.float32), np.stack([e1, e2]))}
    ctx = types.SimpleNamespace(data=types.SimpleNamespace(train_x=torch.zeros(2, 1, 32, 32, dtype=torch.uint8)),
                                device=CPU)
    gamma, gamma_partner = method.asift_masks(ctx, torch.tensor([0, 1]), torch.tensor([1, 0]), 8, 8)
    # 32 -> 8 pixels per cell 4: x 5.5 -> cell column (6 / 4) - 0.5 = 1, y 9.5 -> row 2; x 25.5 -> 6, y 29.5 -> 7
    assert gamma.shape == (2, 1, 8, 8)
    assert gamma[0, 0].argmax().item() == 2 * 8 + 1 and gamma[0, 0, 2, 1].item() == pytest.approx(1.0)
    assert gamma_partner[0, 0].argmax().item() == 7 * 8 + 6 and gamma_partner[0, 0, 7, 6].item() == pytest.approx(1.0)
    assert gamma[0, 0, 2, 2].item() == pytest.approx(math.exp(-0.5))  # a Gaussian of sigma 1 cell
    # one pair each way (the ambiguous keypoints add nothing): image 1's turn is the same pair, swapped
    assert torch.equal(gamma[1], gamma_partner[0]) and torch.equal(gamma_partner[1], gamma[0])
    assert gamma.sum().item() == pytest.approx(gamma_partner.sum().item())


def test_a_tac_ccl_run_with_the_asift_matcher_uses_the_batchs_own_images(reg, tmp_path, digits, monkeypatch):
    pytest.importorskip("cv2", reason="the asift matcher's optional dependency")
    from ssl_bench_plugins.methods import tac_ccl

    seen = []
    real = tac_ccl.asift_features

    def spy(image):
        seen.append(image)
        return real(image)

    monkeypatch.setattr(tac_ccl, "asift_features", spy)
    cfg = with_method(reg, tmp_path, "tac_ccl")
    cfg["methods"]["tac_ccl"]["matcher"] = "asift"
    outcome = train_run(cfg, reg, {"source": digits}, CPU)
    assert outcome.status == "ok", outcome.error
    # the stored training images themselves (grey uint8, their size), each looked at once: fewer calls than
    # the 12 x 16 images drawn; SIFT finds a few keypoints even on 8 x 8 digits, so the term trains
    stored = {image.numpy().tobytes() for image in digits.train_x[:, 0]}
    assert seen and all(image.shape == (8, 8) and image.dtype == np.uint8 for image in seen)
    assert all(image.tobytes() in stored for image in seen) and len(seen) < 12 * 16
    cross = [p["loss_terms"]["tac_cross"] for p in outcome.curves]
    assert all(math.isfinite(v) and v >= 0 for v in cross) and max(cross) > 0
    # and it is the matcher's term: the fallback's differs
    cfg["methods"]["tac_ccl"]["matcher"] = "features"
    fallback = train_run(cfg, reg, {"source": digits}, CPU)
    assert [p["loss_terms"]["tac_cross"] for p in fallback.curves] != cross


def test_the_asift_matcher_without_opencv_is_one_clear_error(reg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    text = GRID.replace('method = "ms_baseline"', 'method = "tac_ccl"').replace(
        "cross_weight = 1.0", 'cross_weight = 1.0\nmatcher = "asift"')
    with pytest.raises(UserError, match="matcher = 'asift' needs OpenCV, which is not installed: pip install "
                                        "opencv-python-headless"):
        prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path)
