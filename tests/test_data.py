"""Seeded protocol subsets, count checks, index hashes and the device-side batch samplers
(ssl_bench/data.py), on the real digits labels and on small synthetic label arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_bench import ImageDataset, UserError
from ssl_bench.data import DeviceData, Subsets, check_counts, draw_subsets, index_hash, validation_indices
from ssl_bench_plugins.datasets import digits as digits_plugin


@pytest.fixture(scope="module")
def digits():
    return digits_plugin.load_digits(None)


@pytest.fixture(scope="module")
def labels(digits) -> np.ndarray:
    return digits.train_y.numpy()


def draw(labels, seed=0, n_labeled=50, n_unlabeled=100, overlap=True, n_validation=0):
    return draw_subsets(labels, 10, seed=seed, n_labeled=n_labeled, n_unlabeled=n_unlabeled, overlap=overlap,
                        n_validation=n_validation)


# --------------------------------------------------------------------------- the digits split
def test_digits_split_sizes_and_stratification(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    all_labels = sklearn_digits().target
    assert len(digits.train_y) == 1297 and len(digits.test_y) == 500
    assert digits.train_x.shape == (1297, 1, 8, 8) and digits.test_x.shape == (500, 1, 8, 8)
    assert digits.train_x.dtype == torch.uint8 and digits.num_classes == 10
    test_counts = np.bincount(digits.test_y.numpy(), minlength=10)
    assert test_counts.sum() == 500
    # stratified: each class's share of the 500 test images follows its share of all 1797 images
    # (about 50 each; class 8 has only 174 images in all, so it gets 48)
    expected = np.bincount(all_labels, minlength=10) * 500 / len(all_labels)
    assert np.all(np.abs(test_counts - expected) <= 1), (test_counts, expected)
    assert np.all(np.abs(test_counts - 50) <= 2)
    assert test_counts.tolist() == [50, 51, 49, 51, 50, 51, 50, 50, 48, 50]
    assert digits.class_counts().tolist() == [128, 131, 128, 132, 131, 131, 131, 129, 126, 130]


def test_digits_split_is_pinned():
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    train, test = digits_plugin.split_indices(bunch.target)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1797
    # Pinned: changing the digits split changes every digits result (and every committed result
    # set made on it). If this fails, the split moved (e.g. a scikit-learn change): do not just
    # update the literal.
    assert index_hash(test) == "76793c845d9ee44a"
    assert index_hash(train) == "129d07f326e38c61"


def test_digits_loader_uses_the_split(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    train, test = digits_plugin.split_indices(bunch.target)
    assert np.array_equal(digits.test_y.numpy(), bunch.target[test])
    assert np.array_equal(digits.train_y.numpy(), bunch.target[train])
    # pixels 0-16 scaled to 0-255
    assert np.array_equal(digits.test_x.numpy()[:, 0], np.rint(bunch.images[test] * 255 / 16).astype(np.uint8))


# --------------------------------------------------------------------------- draw_subsets
@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
@pytest.mark.parametrize("n_labeled", [10, 50, 200])
def test_labeled_set_is_class_balanced(labels, seed, n_labeled):
    subsets = draw(labels, seed=seed, n_labeled=n_labeled)
    assert len(subsets.labeled) == n_labeled
    assert len(np.unique(subsets.labeled)) == n_labeled
    assert np.bincount(labels[subsets.labeled], minlength=10).tolist() == [n_labeled // 10] * 10
    assert np.array_equal(subsets.labeled, np.sort(subsets.labeled))
    assert subsets.labeled.dtype == np.int64 and subsets.unlabeled.dtype == np.int64


def test_unlabeled_set_size_and_uniqueness(labels):
    subsets = draw(labels, n_unlabeled=300)
    assert len(subsets.unlabeled) == 300 and len(np.unique(subsets.unlabeled)) == 300
    assert subsets.unlabeled.min() >= 0 and subsets.unlabeled.max() < len(labels)
    assert len(subsets.validation) == 0


def test_overlap_allows_intersection(labels):
    # 100 labeled + 1250 unlabeled > 1297: with overlap they must share at least 53 samples
    subsets = draw(labels, n_labeled=100, n_unlabeled=1250, overlap=True)
    assert len(np.intersect1d(subsets.labeled, subsets.unlabeled)) >= 53


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_overlap_guarantees_disjoint_sets(labels, seed):
    subsets = draw(labels, seed=seed, n_labeled=100, n_unlabeled=1197, overlap=False)
    assert len(np.intersect1d(subsets.labeled, subsets.unlabeled)) == 0
    # 1197 = every sample that is not labeled
    assert np.array_equal(np.union1d(subsets.labeled, subsets.unlabeled), np.arange(len(labels)))


def test_all_semantics(labels):
    n = len(labels)
    both = draw(labels, n_labeled="all", n_unlabeled="all", overlap=True)
    assert np.array_equal(both.labeled, np.arange(n)) and np.array_equal(both.unlabeled, np.arange(n))
    # "all" unlabeled without overlap: every sample not labeled
    rest = draw(labels, n_labeled=50, n_unlabeled="all", overlap=False)
    assert len(rest.unlabeled) == n - 50
    assert np.array_equal(np.sort(np.concatenate([rest.labeled, rest.unlabeled])), np.arange(n))
    # "all" unlabeled with overlap: the whole training set, labeled samples included
    inside = draw(labels, n_labeled=50, n_unlabeled="all", overlap=True)
    assert np.array_equal(inside.unlabeled, np.arange(n))
    # "all" labeled and no overlap leaves nothing unlabeled
    none_left = draw(labels, n_labeled="all", n_unlabeled="all", overlap=False)
    assert len(none_left.unlabeled) == 0


def test_zero_unlabeled(labels):
    subsets = draw(labels, n_unlabeled=0)
    assert len(subsets.unlabeled) == 0 and subsets.unlabeled.dtype == np.int64


def test_same_seed_same_subsets(labels):
    one = draw(labels, seed=3, n_labeled=50, n_unlabeled=200, n_validation=40)
    two = draw(labels, seed=3, n_labeled=50, n_unlabeled=200, n_validation=40)
    for key in ("labeled", "unlabeled", "validation"):
        assert np.array_equal(getattr(one, key), getattr(two, key))
    assert one.hashes() == two.hashes()


def test_different_seed_different_subsets(labels):
    one = draw(labels, seed=0, n_labeled=50, n_unlabeled=200, n_validation=40)
    two = draw(labels, seed=1, n_labeled=50, n_unlabeled=200, n_validation=40)
    for key in ("labeled", "unlabeled", "validation"):
        assert not np.array_equal(getattr(one, key), getattr(two, key)), key
    assert one.hashes()["labeled_hash"] != two.hashes()["labeled_hash"]


@pytest.mark.parametrize("overlap", [True, False])
def test_labeled_set_does_not_depend_on_unlabeled_count(labels, overlap):
    reference = draw(labels, seed=5, n_labeled=50, n_unlabeled=0, overlap=overlap).labeled
    for n_unlabeled in (10, 500, "all"):
        assert np.array_equal(draw(labels, seed=5, n_labeled=50, n_unlabeled=n_unlabeled, overlap=overlap).labeled,
                              reference)


def test_unlabeled_set_does_not_depend_on_labeled_count_with_overlap(labels):
    reference = draw(labels, seed=5, n_labeled=20, n_unlabeled=300).unlabeled
    for n_labeled in (50, 100, "all"):
        assert np.array_equal(draw(labels, seed=5, n_labeled=n_labeled, n_unlabeled=300).unlabeled, reference)


def test_validation_set_is_disjoint(labels):
    subsets = draw(labels, seed=2, n_labeled=100, n_unlabeled="all", overlap=True, n_validation=150)
    assert len(subsets.validation) == 150 and len(np.unique(subsets.validation)) == 150
    assert len(np.intersect1d(subsets.validation, subsets.labeled)) == 0
    assert len(np.intersect1d(subsets.validation, subsets.unlabeled)) == 0
    assert len(subsets.unlabeled) == len(labels) - 150
    assert np.bincount(labels[subsets.labeled], minlength=10).tolist() == [10] * 10
    # the labeled "all" set is the training set minus the validation set
    everything = draw(labels, seed=2, n_labeled="all", n_unlabeled=0, n_validation=150)
    assert np.array_equal(everything.labeled, np.setdiff1d(np.arange(len(labels)), subsets.validation))
    # the validation set of a seed is the same whatever the other counts are
    assert np.array_equal(everything.validation, subsets.validation)


def test_validation_taking_everything_is_an_error(labels):
    with pytest.raises(UserError, match=r"n_validation=1297 leaves no training samples \(the training set has 1297\)"):
        draw(labels, n_validation=1297)


def test_synthetic_labels_balanced_per_class():
    labels = np.array([0, 1, 2] * 5 + [2] * 5)  # 5, 5, 10 samples
    subsets = draw_subsets(labels, 3, seed=0, n_labeled=15, n_unlabeled=5, overlap=False)
    assert np.bincount(labels[subsets.labeled], minlength=3).tolist() == [5, 5, 5]
    # classes 0 and 1 are used up entirely; the unlabeled set is the remaining class-2 samples
    assert np.array_equal(np.sort(subsets.unlabeled), np.setdiff1d(np.arange(20), subsets.labeled))
    assert set(labels[subsets.unlabeled]) == {2}


# --------------------------------------------------------------------------- check_counts
def check(labels, n_labeled=50, n_unlabeled=0, overlap=True, n_validation=0):
    check_counts(labels, 10, n_labeled=n_labeled, n_unlabeled=n_unlabeled, overlap=overlap,
                 n_validation=n_validation, dataset="digits")


def test_check_counts_not_a_multiple(labels):
    with pytest.raises(UserError) as info:
        check(labels, n_labeled=25)
    assert str(info.value) == ("n_labeled=25 is not a multiple of the 10 classes of digits: "
                               "labeled sets are class-balanced")


def test_check_counts_per_class_above_smallest_class(labels):
    check(labels, n_labeled=1260)  # 126 per class: exactly the smallest class (8)
    draw(labels, n_labeled=1260, n_unlabeled=0)  # and it can be drawn
    with pytest.raises(UserError) as info:
        check(labels, n_labeled=1270)
    assert str(info.value) == ("n_labeled=1270 asks for 127 labeled samples per class, but the smallest class "
                               "of digits has 126 training samples")


def test_check_counts_per_class_with_validation(labels):
    """Exact: the seed's own validation draw is removed before the per-class check."""
    validation = validation_indices(len(labels), 300, seed=3)
    left = np.bincount(labels, minlength=10) - np.bincount(labels[validation], minlength=10)
    assert left.min() < 126 - 10 and left.min() > 126 - 300  # neither untouched nor the conservative bound
    most = 10 * int(left.min())
    check_counts(labels, 10, n_labeled=most, n_unlabeled=0, overlap=True, n_validation=300, dataset="digits", seed=3)
    subsets = draw_subsets(labels, 10, seed=3, n_labeled=most, n_unlabeled=0, overlap=True, n_validation=300)
    assert np.array_equal(subsets.validation, validation) and len(subsets.labeled) == most  # it can be drawn
    with pytest.raises(UserError) as info:
        check_counts(labels, 10, n_labeled=most + 10, n_unlabeled=0, overlap=True, n_validation=300,
                     dataset="digits", seed=3)
    c = int(left.argmin())
    assert str(info.value) == (f"n_labeled={most + 10} asks for {most // 10 + 1} labeled samples per class, but "
                               f"class {c} of digits has {int(left[c])} of its {int(np.bincount(labels)[c])} "
                               f"training samples left after seed 3's n_validation=300")


def test_check_counts_unlabeled_with_overlap(labels):
    check(labels, n_labeled=50, n_unlabeled=1297, overlap=True)
    with pytest.raises(UserError) as info:
        check(labels, n_labeled=50, n_unlabeled=1298, overlap=True)
    assert str(info.value) == ("n_unlabeled=1298 is more than the 1297 training samples of digits available "
                               "for the unlabeled set")
    with pytest.raises(UserError, match=r"more than the 1287 training samples"):
        check(labels, n_labeled=50, n_unlabeled=1288, overlap=True, n_validation=10)


def test_check_counts_unlabeled_without_overlap(labels):
    check(labels, n_labeled=100, n_unlabeled=1197, overlap=False)
    draw(labels, n_labeled=100, n_unlabeled=1197, overlap=False)  # the boundary can be drawn
    with pytest.raises(UserError) as info:
        check(labels, n_labeled=100, n_unlabeled=1198, overlap=False)
    assert str(info.value) == ("n_unlabeled=1198 is more than the 1197 training samples of digits available "
                               "for the unlabeled set (unlabeled_overlap=false excludes the labeled samples)")
    with pytest.raises(UserError, match=r"more than the 0 training samples"):
        check(labels, n_labeled="all", n_unlabeled=1, overlap=False)


def test_check_counts_accepts_all(labels):
    check(labels, n_labeled="all", n_unlabeled="all", overlap=False)
    check(labels, n_labeled="all", n_unlabeled="all", overlap=True, n_validation=100)
    check(labels, n_labeled=50, n_unlabeled="all", overlap=False)


# --------------------------------------------------------------------------- index_hash
def test_index_hash_is_order_and_dtype_independent():
    a = np.array([5, 3, 9, 1], dtype=np.int64)
    h = index_hash(a)
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert index_hash(a[::-1]) == h
    assert index_hash(np.array([1, 3, 5, 9], dtype=np.int32)) == h
    assert index_hash(np.random.default_rng(0).permutation(a)) == h
    assert index_hash(np.array([1, 3, 5, 8])) != h
    assert index_hash(np.array([1, 3, 5])) != h
    assert index_hash(np.zeros(0, dtype=np.int64)) != h


def test_subsets_hashes():
    subsets = Subsets(np.array([2, 1]), np.array([3]), np.zeros(0, dtype=np.int64))
    assert subsets.hashes() == {"labeled_hash": index_hash(np.array([1, 2])),
                                "unlabeled_hash": index_hash(np.array([3])),
                                "validation_hash": index_hash(np.zeros(0, dtype=np.int64))}


# --------------------------------------------------------------------------- DeviceData
def indexed_dataset(labels: np.ndarray, num_classes: int) -> ImageDataset:
    """Images that carry their own index: pixel 0 = i // 256, pixel 1 = i % 256. With mean 0 and
    std 1/255 the normalised batch holds those numbers, so a batch can be mapped back to indices."""
    n = len(labels)
    idx = np.arange(n)
    x = torch.from_numpy(np.stack([idx // 256, idx % 256], axis=1).astype(np.uint8)).view(n, 1, 1, 2)
    return ImageDataset("indexed", x, torch.as_tensor(labels, dtype=torch.int64), x[:1].clone(),
                        torch.zeros(1, dtype=torch.int64), num_classes, (0.0,), (1 / 255,))


def indices_of(x: torch.Tensor) -> np.ndarray:
    pixels = torch.round(x.view(len(x), 2)).to(torch.int64).numpy()
    return pixels[:, 0] * 256 + pixels[:, 1]


def device_data(labels, labeled, unlabeled=(), num_classes=None, seed=0) -> DeviceData:
    num_classes = num_classes or int(max(labels)) + 1
    subsets = Subsets(np.asarray(labeled, dtype=np.int64), np.asarray(unlabeled, dtype=np.int64),
                      np.zeros(0, dtype=np.int64))
    return DeviceData(indexed_dataset(np.asarray(labels), num_classes), subsets, torch.device("cpu"), seed)


# 20 samples, 4 classes (label = index % 4); labeled: class 0 -> 5 samples, class 1 -> 2,
# class 2 -> 4, class 3 -> none
SYN_LABELS = np.array([0, 1, 2, 3] * 5)


def synthetic():
    labeled = np.array([0, 4, 8, 12, 16,  # class 0: 5 samples
                        1, 5,  # class 1: 2 samples
                        2, 6, 10, 14])  # class 2: 4 samples
    unlabeled = np.array([3, 7, 11, 19, 0])
    return labeled, unlabeled


def test_labeled_batch_is_class_balanced_without_repeats():
    labeled, _ = synthetic()
    data = device_data(SYN_LABELS, labeled, num_classes=4)
    for _ in range(10):
        x, y = data.labeled_batch(2)
        assert x.shape == (6, 1, 1, 2) and x.dtype == torch.float32
        # class 3 has no labeled samples, so it is absent; blocks in class order
        assert y.tolist() == [0, 0, 1, 1, 2, 2]
        idx = indices_of(x)
        assert np.array_equal(SYN_LABELS[idx], y.numpy())
        assert set(idx) <= set(labeled.tolist())
        for c in range(3):
            block = idx[y.numpy() == c]
            assert len(set(block.tolist())) == len(block)  # no repeat within a class


def test_labeled_batch_cycles_through_small_classes():
    labeled, _ = synthetic()
    data = device_data(SYN_LABELS, labeled, num_classes=4)
    x, y = data.labeled_batch(4)
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    idx = indices_of(x)
    class0, class1, class2 = idx[:4], idx[4:8], idx[8:]
    assert len(set(class0.tolist())) == 4 and set(class0.tolist()) <= {0, 4, 8, 12, 16}
    # class 1 has 2 labeled samples for 4 slots: each appears exactly twice
    assert sorted(class1.tolist()) == [1, 1, 5, 5]
    # class 2 has exactly 4: a permutation of them
    assert sorted(class2.tolist()) == [2, 6, 10, 14]
    # 5 slots of a 2-sample class: 3 + 2
    x, y = data.labeled_batch(5)
    counts = np.bincount(indices_of(x)[5:10], minlength=6)
    assert sorted([counts[1], counts[5]]) == [2, 3]


def test_labeled_batch_is_random_within_class():
    labeled, _ = synthetic()
    data = device_data(SYN_LABELS, labeled, num_classes=4)
    seen = set()
    firsts = []
    for _ in range(30):
        idx = indices_of(data.labeled_batch(2)[0])
        seen.update(idx[:2].tolist())
        firsts.append(idx[0])
    assert seen == {0, 4, 8, 12, 16}  # every class-0 sample gets drawn
    assert len(set(firsts)) > 1


def test_labeled_batch_deterministic_per_seed():
    labeled, unlabeled = synthetic()
    one = device_data(SYN_LABELS, labeled, unlabeled, num_classes=4, seed=11)
    two = device_data(SYN_LABELS, labeled, unlabeled, num_classes=4, seed=11)
    other = device_data(SYN_LABELS, labeled, unlabeled, num_classes=4, seed=12)
    seq_one, seq_two, seq_other = [], [], []
    for _ in range(5):
        for data, seq in ((one, seq_one), (two, seq_two), (other, seq_other)):
            seq.append(indices_of(data.labeled_batch(3)[0]).tolist())
            seq.append(indices_of(data.unlabeled_batch(4)).tolist())
    assert seq_one == seq_two
    assert seq_one != seq_other


def test_labeled_batch_on_digits(labels):
    subsets = draw(labels, seed=0, n_labeled=50, n_unlabeled=100)
    data = DeviceData(indexed_dataset(labels, 10), subsets, torch.device("cpu"), 0)
    # 5 labeled per class, 3 per batch: no repeats; 10 per batch: each sample exactly twice
    x, y = data.labeled_batch(3)
    idx = indices_of(x)
    assert np.bincount(y.numpy(), minlength=10).tolist() == [3] * 10
    assert len(set(idx.tolist())) == 30 and set(idx.tolist()) <= set(subsets.labeled.tolist())
    assert np.array_equal(labels[idx], y.numpy())
    x, y = data.labeled_batch(10)
    counts = np.bincount(indices_of(x), minlength=len(labels))
    assert np.all(counts[subsets.labeled] == 2) and counts.sum() == 100


def test_unlabeled_batch_draws_from_the_unlabeled_set():
    labeled, unlabeled = synthetic()
    data = device_data(SYN_LABELS, labeled, unlabeled, num_classes=4)
    drawn = set()
    for _ in range(20):
        x = data.unlabeled_batch(7)
        assert x.shape == (7, 1, 1, 2)
        drawn.update(indices_of(x).tolist())
    assert drawn == set(unlabeled.tolist())


def test_unlabeled_batch_none_without_unlabeled_data():
    labeled, _ = synthetic()
    data = device_data(SYN_LABELS, labeled, [], num_classes=4)
    assert data.unlabeled_batch(10) is None
    with_data = device_data(SYN_LABELS, labeled, [3, 7], num_classes=4)
    assert with_data.unlabeled_batch(0) is None
    assert with_data.unlabeled_batch(1) is not None


def test_normalise_uses_dataset_mean_and_std(digits):
    subsets = draw(digits.train_y.numpy(), n_labeled=10, n_unlabeled=0)
    data = DeviceData(digits, subsets, torch.device("cpu"), 0)
    x = data.normalise(digits.train_x[:50])
    expected = (digits.train_x[:50].double() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x.double(), expected, atol=1e-5)
    whole = data.normalise(digits.train_x)
    assert abs(whole.mean().item()) < 1e-4 and abs(whole.std().item() - 1) < 1e-3


# ------------------------------------------------------------------ augmentation hook
def test_augmentation_is_applied_to_training_batches_only_when_asked(digits):
    import dataclasses

    calls = []

    def invert(x, generator):
        calls.append((tuple(x.shape), float(x.min()), float(x.max())))
        return 1.0 - x

    augmented = dataclasses.replace(digits, augment=invert)
    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=30, overlap=True)
    plain = DeviceData(augmented, subsets, torch.device("cpu"), seed=5, augment=False)
    inverted = DeviceData(augmented, subsets, torch.device("cpu"), seed=5, augment=True)
    x_plain, y_plain = plain.labeled_batch(2)
    x_inv, y_inv = inverted.labeled_batch(2)
    assert torch.equal(y_plain, y_inv)
    # the hook sees [0, 1] floats; its output is normalised afterwards
    assert calls == [((20, 1, 8, 8), 0.0, 1.0)]
    mean, std = digits.mean[0], digits.std[0]
    assert torch.allclose(x_inv, ((1.0 - (x_plain * std + mean)) - mean) / std, atol=1e-5)
    inverted.unlabeled_batch(7)
    assert calls[-1][0] == (7, 1, 8, 8)


def test_augment_true_without_an_augmentation_is_rejected_before_training(tmp_path):
    from ssl_bench.registry import load_registry
    from ssl_bench.runner import prepare

    grid = tmp_path / "g.toml"
    grid.write_text('[base]\ndataset = "digits"\nbackbone = "lba_convnet"\nmethod = "lba"\naugment = true\n'
                    '[base.backbones.lba_convnet]\nwidths = "4"\n')
    with pytest.raises(UserError, match=r"augment = true, but data set 'digits' \(source\) defines no standard augmentation"):
        prepare(str(grid), load_registry(), data_dir=tmp_path)


def test_augmentation_names_the_pipeline_of_the_plain_batches(digits):
    """augment = true with augmentation = "weak": the plain batches go through the data set's own
    weak view (digits: translation, no flip), drawn from the run's generator like any view."""
    import functools

    from ssl_bench.registry import load_registry
    from ssl_bench.views import view_pipeline

    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=30, overlap=True)
    weak = functools.partial(view_pipeline, "weak", load_registry())
    data = DeviceData(digits, subsets, torch.device("cpu"), seed=5, augment=True, augmentation=weak)
    plain = DeviceData(digits, subsets, torch.device("cpu"), seed=5, augment=False, augmentation=weak)
    images = digits.train_x[:6]
    generator = torch.Generator().manual_seed(5)
    expected = data.domain.prepare(images, digits.pipelines["weak"], generator)
    assert torch.equal(data.training_batch(images), expected)
    assert not torch.equal(expected, data.normalise(images))  # it did move the images
    assert torch.equal(plain.training_batch(images), plain.normalise(images))  # augment = false: none


@pytest.mark.parametrize("settings, message", [
    ('augmentation = "weak"\n', r"augmentation = 'weak' is set, but augment = false"),
    ('augment = true\naugmentation = "wobbly"\n', r"wobbly"),
])
def test_augmentation_errors_before_training(tmp_path, settings, message):
    from ssl_bench.registry import load_registry
    from ssl_bench.runner import prepare

    grid = tmp_path / "g.toml"
    grid.write_text('[base]\ndataset = "digits"\nbackbone = "lba_convnet"\nmethod = "lba"\n' + settings +
                    '[base.backbones.lba_convnet]\nwidths = "4"\n')
    with pytest.raises(UserError, match=message):
        prepare(str(grid), load_registry(), data_dir=tmp_path)


def test_a_separate_unlabeled_pool_supplies_the_unlabeled_set(digits):
    """STL-10 style: labeled samples from the training set, unlabeled ones from their own pool."""
    import dataclasses

    pool = torch.full((40, 1, 8, 8), 255, dtype=torch.uint8)
    pooled = dataclasses.replace(digits, unlabeled_x=pool)
    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled="all",
                           overlap=False, unlabeled_pool=pooled.unlabeled_pool)
    assert list(subsets.unlabeled) == list(range(40))
    few = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=15, overlap=True,
                       unlabeled_pool=40)
    assert len(few.unlabeled) == 15 and few.unlabeled.max() < 40
    data = DeviceData(pooled, subsets, torch.device("cpu"), seed=0)
    batch = data.unlabeled_batch(5)
    assert torch.allclose(batch, torch.full_like(batch, (1.0 - digits.mean[0]) / digits.std[0]))
    with pytest.raises(UserError, match="n_unlabeled=41 is more than the 40 images of digits's unlabeled pool"):
        check_counts(digits.train_y.numpy(), 10, n_labeled=20, n_unlabeled=41, overlap=True, n_validation=0,
                     dataset="digits", unlabeled_pool=40)


def test_a_data_set_transform_applies_to_training_and_evaluation_batches(digits):
    import dataclasses

    shifted = dataclasses.replace(digits, transform=lambda x: x + 1.0, mean=(1.0,), std=(1.0,))
    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=5, overlap=True)
    data = DeviceData(shifted, subsets, torch.device("cpu"), seed=0)
    x, _ = data.labeled_batch(2)
    assert x.min() >= 0 and x.max() <= 1  # (x/255 + 1 - 1) / 1
    test = data.normalise(digits.test_x[:3])
    assert torch.allclose(test, digits.test_x[:3].float() / 255)
