"""The protocol: how a run's data is drawn and how long and how it trains.

These keys sit at the top of a grid's ``[base]`` table (or in ``[axes]``). Everything here is
core; a method's own knobs live under ``[base.methods.NAME]``.
"""
from __future__ import annotations

from typing import Literal

from .params import ALL, Count, Param, hyperparameter, params_of_class

V2 = "0.2"  # the core version that added the task, metric, view, sampler and optimiser keys

#: how the classic result columns are described in table captions (every other column is
#: described from its name: ``ssl_bench.tables.describe_metric``)
METRICS = {
    "test_error": "test error (%) of the final model, after the last step",
    "test_error_min": "minimum test error (%) over all evaluations: selection on the TEST set, an optimistic bound",
    "test_error_last_k": "median test error (%) of the last k evaluations (as FixMatch reports)",
    "test_error_best_val": "test error (%) at the evaluation with the lowest validation error",
    "val_error": "validation error (%) of the final model",
    "test_accuracy": "test accuracy (%) of the final model (100 - test_error)",
}


class Protocol:
    """Core run settings. Counts are totals over the training set; ``"all"`` means every sample."""

    seed: int = hyperparameter(0, ge=0, help="every random choice of the run derives from it")
    n_labeled: Count = hyperparameter(ALL, help="labeled samples, class-balanced (a multiple of the class count)")
    n_unlabeled: Count = hyperparameter(0, help="unlabeled samples drawn independently of the labeled ones")
    unlabeled_overlap: bool = hyperparameter(True, help="may the unlabeled set contain labeled samples (LbA Table 3: yes)")
    n_validation: int = hyperparameter(0, ge=0, help="samples held out of the training set for validation")
    labeled_per_class: int = hyperparameter(10, ge=1, help="labeled batch: this many samples of every class")
    unlabeled_batch: int = hyperparameter(100, ge=0, help="unlabeled batch size (uniform draws)")
    steps: int = hyperparameter(1000, ge=0, help="optimiser steps (0: no training; the network as initialised is evaluated once, at step 0: random-network and k-means-on-pixels baselines)")
    eval_every: int = hyperparameter(100, ge=1, help="evaluate every this many steps (and after the last)")
    last_k: int = hyperparameter(5, ge=1, help="evaluations in the last-k median")
    optimizer: Literal["adam", "sgd"] = hyperparameter("adam", help="Adam (default betas) or SGD with momentum 0.9")
    lr: float = hyperparameter(1e-3, gt=0, help="initial learning rate")
    lr_decay_every: int = hyperparameter(0, ge=0, help="multiply the lr by lr_decay_factor every this many steps (0: never)")
    lr_decay_factor: float = hyperparameter(0.33, gt=0, le=1)
    augment: bool = hyperparameter(False, help="augment the plain training batches (those a method reads as batch.x_labeled / x_unlabeled) with `augmentation`")
    weight_decay: float = hyperparameter(0.0, ge=0, help="L2 regulariser: weight * sum(w^2)/2 over conv/linear weights, added to the loss (optim.weight_decay_style = \"decoupled\": the optimiser's own decay)")
    # ---- core v2 (version 0.2): each is left out of run ids while at its default
    task: str = hyperparameter("ssl", help="what the run draws and how it is evaluated: ssl, domain_adaptation, clustering, retrieval (`ssl-bench list tasks`)", since=V2)
    target: str = hyperparameter("", help="domain_adaptation: the target data set (its training images are the unlabeled set)", since=V2)
    train_classes: list[int] = hyperparameter([], ge=0, help="retrieval: the training classes (the rest are held out for evaluation); [] = the first half", since=V2)
    sampler: Literal["class_balanced", "uniform", "p_k"] = hyperparameter("class_balanced", help="labeled batches: labeled_per_class of every class; uniform draws (labeled_batch); P classes x K=labeled_per_class (classes_per_batch)", since=V2)
    labeled_batch: int = hyperparameter(0, ge=0, help="uniform sampler: labeled batch size (0: labeled_per_class x classes)", since=V2)
    classes_per_batch: int = hyperparameter(0, ge=0, help="p_k sampler: P, the classes in each labeled batch (0: all)", since=V2)
    ema_decay: float = hyperparameter(0.0, ge=0, le=0.99999, help="evaluate an exponential moving average of the weights with this decay (0: the trained weights); methods read it as ctx.ema_model", since=V2)
    ema_decay_early: float = hyperparameter(0.0, ge=0, le=0.99999, help="the EMA decay during the first ema_early_steps steps, ema_decay after them (Mean Teacher and Snowball: 0.99 during the ramp-up, then 0.999); 0: ema_decay throughout", since=V2)
    ema_early_steps: int = hyperparameter(0, ge=0, help="steps that use ema_decay_early", since=V2)
    label: str = hyperparameter("", help="a free name for the run's variant, for table rows and columns (e.g. an ablation row: \"aug only\"); part of the run id when set", since=V2)
    metrics: list[str] = hyperparameter([], help="metrics beyond the task's defaults, e.g. [\"nmi\", \"recall@4\"] (`ssl-bench list metrics`)", since=V2)
    pretrained: str = hyperparameter("", help="a local file holding the backbone's weights (a state_dict); its sha256 is stored in the row", since=V2)
    augmentation: str = hyperparameter("standard", help="with augment = true, the pipeline of the plain training batches: \"standard\" (the data set's own, e.g. LbA's SVHN affine + blur) or any view name (\"weak\": flip + translate, the data set's own weak if it has one; `ssl-bench list augmentations`)", since=V2)


class Optim:
    """The optimiser and schedule beyond ``optimizer``/``lr``/``lr_decay_*``/``weight_decay``:
    the ``[base.optim]`` sub-table (``optim.KEY`` in axes and --set)."""

    momentum: float = hyperparameter(0.9, ge=0, le=1, help="SGD momentum", since=V2)
    nesterov: bool = hyperparameter(False, help="SGD with Nesterov momentum", since=V2)
    betas: list[float] = hyperparameter([0.9, 0.999], ge=0, help="Adam's (beta1, beta2)", since=V2)
    weight_decay_style: Literal["l2_loss", "decoupled"] = hyperparameter(
        "l2_loss", help="l2_loss: weight_decay * sum(w^2)/2 added to the loss; decoupled: AdamW's decay for adam, "
                        "torch SGD's weight_decay (w -= lr * wd * w through the gradient) for sgd", since=V2)
    schedule: Literal["step", "cosine", "constant"] = hyperparameter(
        "step", help="step: x lr_decay_factor every lr_decay_every steps; cosine: lr * cos(cosine_fraction * pi * t / steps); constant", since=V2)
    cosine_fraction: float = hyperparameter(0.5, gt=0, le=0.5, help="cosine schedule: 0.5 reaches 0 at the last step; 7/16 is FixMatch's cos(7 pi k / 16 K)", since=V2)
    warmup_steps: int = hyperparameter(0, ge=0, help="linear warm-up of the learning rate from 0 over this many steps", since=V2)


PROTOCOL_PARAMS: list[Param] = params_of_class(Protocol, stop=object)
OPTIM_PARAMS: list[Param] = params_of_class(Optim, stop=object)
#: protocol sub-tables: name -> their parameters (``optim.momentum``)
SUBTABLES: dict[str, list[Param]] = {"optim": OPTIM_PARAMS}
PLUGIN_KEYS = {"method": "methods", "backbone": "backbones", "dataset": "datasets"}
