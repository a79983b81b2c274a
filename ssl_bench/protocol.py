"""The protocol: how a run's data is drawn and how long and how it trains.

These keys sit at the top of a grid's ``[base]`` table (or in ``[axes]``). Everything here is
core; a method's own knobs live under ``[base.methods.NAME]``.
"""
from __future__ import annotations

from typing import Literal

from .params import ALL, Count, Param, hyperparameter, params_of_class

#: the metrics every run records, with the selection rule each one embodies
METRICS = {
    "test_error": "test error (%) of the final model, after the last step",
    "test_error_min": "minimum test error (%) over all evaluations: selection on the TEST set, an optimistic bound",
    "test_error_last_k": "median test error (%) of the last k evaluations (as FixMatch reports)",
    "test_error_best_val": "test error (%) at the evaluation with the lowest validation error",
    "val_error": "validation error (%) of the final model",
    "test_accuracy": "test accuracy (%) of the final model (100 - test_error)",
}
#: metrics computed from a stored column when a table is rendered: name -> (column, function)
DERIVED_METRICS = {"test_accuracy": ("test_error", lambda error: 100.0 - error)}


class Protocol:
    """Core run settings. Counts are totals over the training set; ``"all"`` means every sample."""

    seed: int = hyperparameter(0, ge=0, help="every random choice of the run derives from it")
    n_labeled: Count = hyperparameter(ALL, help="labeled samples, class-balanced (a multiple of the class count)")
    n_unlabeled: Count = hyperparameter(0, help="unlabeled samples drawn independently of the labeled ones")
    unlabeled_overlap: bool = hyperparameter(True, help="may the unlabeled set contain labeled samples (LbA Table 3: yes)")
    n_validation: int = hyperparameter(0, ge=0, help="samples held out of the training set for validation")
    labeled_per_class: int = hyperparameter(10, ge=1, help="labeled batch: this many samples of every class")
    unlabeled_batch: int = hyperparameter(100, ge=0, help="unlabeled batch size (uniform draws)")
    steps: int = hyperparameter(1000, ge=1, help="optimiser steps")
    eval_every: int = hyperparameter(100, ge=1, help="evaluate every this many steps (and after the last)")
    last_k: int = hyperparameter(5, ge=1, help="evaluations in the last-k median")
    optimizer: Literal["adam", "sgd"] = hyperparameter("adam", help="Adam (default betas) or SGD with momentum 0.9")
    lr: float = hyperparameter(1e-3, gt=0, help="initial learning rate")
    lr_decay_every: int = hyperparameter(0, ge=0, help="multiply the lr by lr_decay_factor every this many steps (0: never)")
    lr_decay_factor: float = hyperparameter(0.33, gt=0, le=1)
    augment: bool = hyperparameter(False, help="apply the data set's standard augmentation (see its plugin) to training batches")
    weight_decay: float = hyperparameter(0.0, ge=0, help="L2 regulariser: weight * sum(w^2)/2 over conv/linear weights, added to the loss")


PROTOCOL_PARAMS: list[Param] = params_of_class(Protocol, stop=object)
PLUGIN_KEYS = {"method": "methods", "backbone": "backbones", "dataset": "datasets"}
