"""Deep clustering (``task = "clustering"``; e.g. Haeusser et al. 2018, "Associative deep
clustering").

No label reaches training: ``n_labeled`` must be 0, batches carry no labels
(``batch.x_labeled`` is None) and ``ctx.data.train_y`` is None; the unlabeled set is
``n_unlabeled`` training images. The head has one output per class (a method may ask for
more, over-clustering, through ``Method.head_width``); its argmax is the cluster.

Evaluated on the test set (``test_*``) and the training images the run clusters, its
unlabeled set (``train_*``; the whole training set when ``n_unlabeled = "all"``; the whole
training set too when the unlabeled images come from a separate pool), with
``cluster_accuracy`` (the best one-to-one matching of clusters to classes, Hungarian
algorithm), ``nmi`` and ``ari``.
"""
from __future__ import annotations

import numpy as np

from ssl_bench import EvalSpec, Plan, Task, hookimpl
from ssl_bench.data import check_counts, draw_subsets
from ssl_bench.task import require


class Clustering(Task):
    """Unlabeled training images only; clusters scored against the classes."""

    name = "clustering"
    uses_labels = False
    metrics = ("cluster_accuracy", "nmi", "ari")

    def eval_set_names(self, config):
        return ["test", "train"]

    def check(self, config, data):
        ds = data["source"]
        require(config["n_labeled"] == 0, f"task clustering trains without labels: set n_labeled = 0 "
                                          f"(got {config['n_labeled']!r})")
        require(config["n_unlabeled"] != 0, "task clustering needs unlabeled images: n_unlabeled is 0")
        require(config["n_validation"] == 0, "task clustering has no validation set (it would need labels); "
                                             "set n_validation = 0")
        check_counts(ds.train_y.numpy(), ds.num_classes, n_labeled=0, n_unlabeled=config["n_unlabeled"], overlap=True,
                     n_validation=0, dataset=config["dataset"], unlabeled_pool=ds.unlabeled_pool, seed=config["seed"])

    def plan(self, config, data):
        ds = data["source"]
        subsets = draw_subsets(ds.train_y.numpy(), ds.num_classes, seed=config["seed"], n_labeled=0,
                               n_unlabeled=config["n_unlabeled"], overlap=True, unlabeled_pool=ds.unlabeled_pool)
        clustered = None if ds.unlabeled_x is not None else np.unique(subsets.unlabeled)
        return Plan(domains={"source": ds}, labels=np.full(len(ds.train_y), -1, dtype=np.int64), subsets=subsets,
                    eval_sets=[EvalSpec("test", "source", "test"),
                               EvalSpec("train", "source", "train", indices=clustered)],
                    num_outputs=ds.num_classes, unlabeled_from_pool=ds.unlabeled_x is not None)


@hookimpl
def ssl_bench_tasks():
    return [Clustering]
