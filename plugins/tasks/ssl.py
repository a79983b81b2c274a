"""The classic semi-supervised task (the default, ``task = "ssl"``).

One data set. Labeled set: ``n_labeled`` class-balanced training samples; unlabeled set:
``n_unlabeled`` training samples drawn independently (or from the data set's separate
unlabeled pool, STL-10); an optional validation set of ``n_validation`` training samples.
Evaluated on the test set (``test_*`` columns) and the validation set (``val_*``), by
default with ``error``. See ``ssl_bench.data.draw_subsets`` for the draws.
"""
from __future__ import annotations

import numpy as np

from ssl_bench import EvalSpec, Plan, Task, hookimpl
from ssl_bench.data import check_counts, draw_subsets
from ssl_bench.task import require


def given_labels(train_y: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """The initial label vector: the labeled samples' classes, -1 elsewhere."""
    labels = np.full(len(train_y), -1, dtype=np.int64)
    labels[labeled] = train_y[labeled]
    return labels


class SemiSupervised(Task):
    """Labeled + unlabeled samples of one data set; error on its test set."""

    name = "ssl"

    def check(self, config, data):
        ds = data["source"]
        require(config["n_labeled"] != 0, "task ssl needs labeled samples, got n_labeled = 0 (for training without "
                                          "labels use task = \"clustering\")")
        check_counts(ds.train_y.numpy(), ds.num_classes, n_labeled=config["n_labeled"],
                     n_unlabeled=config["n_unlabeled"], overlap=config["unlabeled_overlap"],
                     n_validation=config["n_validation"], dataset=config["dataset"],
                     unlabeled_pool=ds.unlabeled_pool, seed=config["seed"])

    def plan(self, config, data):
        ds = data["source"]
        train_y = ds.train_y.numpy()
        subsets = draw_subsets(train_y, ds.num_classes, seed=config["seed"], n_labeled=config["n_labeled"],
                               n_unlabeled=config["n_unlabeled"], overlap=config["unlabeled_overlap"],
                               n_validation=config["n_validation"], unlabeled_pool=ds.unlabeled_pool)
        evals = [EvalSpec("test", "source", "test")]
        if config["n_validation"]:
            evals.append(EvalSpec("val", "source", "validation"))
        return Plan(domains={"source": ds}, labels=given_labels(train_y, subsets.labeled), subsets=subsets,
                    eval_sets=evals, num_outputs=ds.num_classes, unlabeled_from_pool=ds.unlabeled_x is not None)


@hookimpl
def ssl_bench_tasks():
    return [SemiSupervised]
