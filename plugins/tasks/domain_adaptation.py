"""Unsupervised domain adaptation (``task = "domain_adaptation"``; Haeusser et al. 2017,
"Associative domain adaptation", the dissertation's chapter 4).

Two data sets: ``dataset`` is the labeled source, ``target`` the unlabeled target.

- Labeled set: ``n_labeled`` class-balanced samples of the source's training set ("all": every one).
- Unlabeled set: ``n_unlabeled`` samples of the TARGET's training set (its labels never reach
  training).
- Each domain keeps its own normalisation (its training mean/std), input transform and
  standard augmentation (``augment = true`` augments each with its own pipeline).
- Evaluated on the target's test set (``test_*``: the adaptation result), the source's test
  set (``source_test_*``) and, with ``n_validation``, a source validation set (``val_*``).
  The target test set also gets ``mmd``: the Gaussian-kernel MMD between the embeddings of the
  two test sets (how far apart the network keeps the domains).

Source-only and target-only baselines are grid cells, not tasks: ``n_unlabeled = 0`` trains
on the source alone (evaluated on the target), and ``task = "ssl"`` on the target data set
with all labels is the target-only bound.

Both data sets must have the same image shape and classes (e.g. digits -> inverted digits).
"""
from __future__ import annotations

from ssl_bench import EvalSpec, Plan, Task, hookimpl
from ssl_bench.data import check_counts, draw_subsets
from ssl_bench.task import require
from ssl_bench_plugins.tasks.ssl import given_labels


class DomainAdaptation(Task):
    """Labeled source + unlabeled target; error on the target's test set (and the source's), MMD between them."""

    name = "domain_adaptation"
    keys = ("target",)
    required = ("target",)

    def data_roles(self, config):
        return {"source": config["dataset"], "target": config["target"]}

    def eval_metrics(self, config, name):
        extra = ("mmd",) if name == "test" else ()
        return tuple(dict.fromkeys([*self.metrics, *extra, *config.get("metrics", [])]))

    def eval_set_names(self, config):
        return ["test", "source_test"] + (["val"] if config.get("n_validation") else [])

    def check(self, config, data):
        source, target = data["source"], data["target"]
        require(config["n_labeled"] != 0, "task domain_adaptation needs labeled source samples, got n_labeled = 0")
        require(source.input_shape == target.input_shape,
                f"domain_adaptation: source {config['dataset']!r} has images {source.input_shape} but target "
                f"{config['target']!r} has {target.input_shape}; the network is shared, so they must match")
        require(source.num_classes == target.num_classes,
                f"domain_adaptation: source {config['dataset']!r} has {source.num_classes} classes, target "
                f"{config['target']!r} {target.num_classes}")
        check_counts(source.train_y.numpy(), source.num_classes, n_labeled=config["n_labeled"], n_unlabeled=0,
                     overlap=True, n_validation=config["n_validation"], dataset=config["dataset"], seed=config["seed"])
        n_target = len(target.train_y)
        require(config["n_unlabeled"] == "all" or config["n_unlabeled"] <= n_target,
                f"n_unlabeled={config['n_unlabeled']} is more than the {n_target} training images of the target "
                f"{config['target']!r}")

    def plan(self, config, data):
        source, target = data["source"], data["target"]
        train_y = source.train_y.numpy()
        subsets = draw_subsets(train_y, source.num_classes, seed=config["seed"], n_labeled=config["n_labeled"],
                               n_unlabeled=config["n_unlabeled"], overlap=True, n_validation=config["n_validation"],
                               unlabeled_pool=len(target.train_y))
        evals = [EvalSpec("test", "target", "test", other="source_test"),
                 EvalSpec("source_test", "source", "test", other="test")]
        if config["n_validation"]:
            evals.append(EvalSpec("val", "source", "validation"))
        return Plan(domains={"source": source, "target": target}, labels=given_labels(train_y, subsets.labeled),
                    subsets=subsets, eval_sets=evals, num_outputs=source.num_classes,
                    labeled_domain="source", unlabeled_domain="target", unlabeled_from_pool=False)


@hookimpl
def ssl_bench_tasks():
    return [DomainAdaptation]
