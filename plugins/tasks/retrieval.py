"""Class-disjoint retrieval, the deep-metric-learning protocol (``task = "retrieval"``; Song
et al. 2016; TAC-CCL and SAN use it on CUB, Cars, SOP).

The classes are split in two: ``train_classes`` are the only ones training sees; the others
are held out. By default: the classes of the training split when the data set's training and
test splits have no class in common (the released class-disjoint splits of CUB-200-2011,
Cars196 and SOP: their first 100 / 98 / 11,318 classes), else the first half, 0 .. C/2 - 1
(digits, Fashion-MNIST). Labeled set: ``n_labeled`` samples, class-balanced over the training
classes (labels renumbered 0 .. |train_classes| - 1, the head's width); unlabeled set:
``n_unlabeled`` training images of the training classes. Unsupervised metric learning is
``n_labeled = 0`` with a method that labels images itself (``label_source = "own"``, e.g.
k-means pseudo-labels of the unlabeled set: ms_baseline, tac_ccl). Evaluated on the held-out
classes' TEST images (``test_*``) by ``recall@1/2/4/8`` (grids add others, e.g. ``recall@100``,
``map_at_r``) on the method's embeddings: each image queries all the others (itself excluded).
No validation set.
"""
from __future__ import annotations

import numpy as np

from ssl_bench import EvalSpec, Plan, Task, hookimpl
from ssl_bench.data import draw_subsets
from ssl_bench.task import require


def split_classes(config: dict, ds) -> tuple[list[int], list[int]]:
    """(training classes, held-out classes): ``train_classes``, else the training split's classes
    when no test image shares one (a class-disjoint release), else the first half."""
    train = sorted(config["train_classes"])
    if not train:
        in_train = np.unique(ds.train_y.numpy())
        disjoint = not np.isin(ds.test_y.numpy(), in_train).any()
        train = [int(c) for c in in_train] if disjoint else list(range(ds.num_classes // 2))
    held = set(train)
    return train, [c for c in range(ds.num_classes) if c not in held]


def renumbered(labels: np.ndarray, train: list[int]) -> np.ndarray:
    """Training classes as 0 .. len(train) - 1, held-out classes as -1."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for j, c in enumerate(train):
        out[labels == c] = j
    return out


class Retrieval(Task):
    """Train on some classes, retrieve the held-out classes' test images by embedding."""

    name = "retrieval"
    keys = ("train_classes",)
    metrics = ("recall@1", "recall@2", "recall@4", "recall@8")

    def check(self, config, data):
        ds = data["source"]
        given = config["train_classes"]
        require(all(0 <= c < ds.num_classes for c in given),
                f"train_classes {given} names classes outside 0..{ds.num_classes - 1} of {config['dataset']!r}")
        require(len(set(given)) == len(given), f"train_classes {given} lists a class twice")
        train, held_out = split_classes(config, ds)
        require(train and held_out, f"retrieval needs training and held-out classes; train_classes = {train} "
                                    f"leaves {len(held_out)} of {ds.num_classes} held out")
        require(config["n_validation"] == 0, "task retrieval has no validation set; set n_validation = 0")
        labels = renumbered(ds.train_y.numpy(), train)
        counts = np.bincount(labels[labels >= 0], minlength=len(train))
        if config["n_labeled"] not in ("all", 0):
            require(config["n_labeled"] % len(train) == 0,
                    f"n_labeled={config['n_labeled']} is not a multiple of the {len(train)} training classes: "
                    f"labeled sets are class-balanced")
            per_class = config["n_labeled"] // len(train)
            require(per_class <= counts.min(), f"n_labeled={config['n_labeled']} asks for {per_class} per training "
                                               f"class, but the smallest has {int(counts.min())} images")
        if config["n_unlabeled"] != "all":
            available = int(counts.sum()) - (0 if config["unlabeled_overlap"] else
                                             (int(counts.sum()) if config["n_labeled"] == "all" else config["n_labeled"]))
            require(config["n_unlabeled"] <= available,
                    f"n_unlabeled={config['n_unlabeled']} is more than the {available} training images of the "
                    f"training classes available for the unlabeled set")

    def plan(self, config, data):
        ds = data["source"]
        train, held_out = split_classes(config, ds)
        labels = renumbered(ds.train_y.numpy(), train)
        subsets = draw_subsets(labels, len(train), seed=config["seed"], n_labeled=config["n_labeled"],
                               n_unlabeled=config["n_unlabeled"], overlap=config["unlabeled_overlap"],
                               allowed=np.flatnonzero(labels >= 0))
        given = np.full(len(labels), -1, dtype=np.int64)
        given[subsets.labeled] = labels[subsets.labeled]
        queries = np.flatnonzero(np.isin(ds.test_y.numpy(), held_out))
        return Plan(domains={"source": ds}, labels=given, subsets=subsets,
                    eval_sets=[EvalSpec("test", "source", "test", indices=queries)], num_outputs=len(train))


@hookimpl
def ssl_bench_tasks():
    return [Retrieval]
