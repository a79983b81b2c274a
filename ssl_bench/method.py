"""The method API: what a semi-supervised method is to the training loop.

A method that only adds loss terms is one short class::

    class EntropyMinimisation(Method):
        name = "entmin"
        weight: float = hyperparameter(1.0, ge=0, help="weight of the entropy term")

        def loss_terms(self, batch, model, ctx):
            terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
            if batch.x_unlabeled is not None:
                p = model(batch.x_unlabeled).softmax(1)
                terms["entropy"] = self.weight * -(p * p.clamp_min(1e-8).log()).sum(1).mean()
            return terms

Hyperparameters are annotated class attributes (int, float, bool, str, Literal[...]) with
defaults; grids set them under ``[base.methods.NAME]``; unknown keys and wrong types are
errors before training starts. The loop sums the returned terms and logs each one.

Methods with their own schedule (delays, ramps, periodic re-clustering, generations) keep
that state on ``self`` and use the lifecycle hooks, which the loop calls in this order::

    build_modules(model, num_outputs)                  # once per run: method-owned modules
    on_train_start(model, ctx)                         # once, after the model is built
    for step in range(steps):
        ctx.step = step
        on_step_start(model, ctx)                      # e.g. re-cluster every k steps
        terms = loss_terms(batch, model, ctx)          # ctx.step / ctx.progress for ramps
        (backward, optimiser step, EMA update)
        on_step_end(model, ctx)                        # e.g. ctx.labels.assign(...), ctx.restart_optimizer()
        at evaluations: diagnostics(model, ctx)        # extra numbers for the curve
    evaluation uses eval_model(model) and predict(model, x)

What the core provides, so methods do not re-implement it:

- **Views** (``views = {"unlabeled": ("weak", "strong")}``): augmented copies of each batch by
  named pipeline (``ssl_bench.views``), in ``batch.views[role]``; ``batch.idx_labeled`` /
  ``batch.idx_unlabeled`` are the sampled images' indices.
- **Method-owned modules** (:meth:`Method.build_modules`): centroids, cluster heads,
  discriminators, created per run from the run's seed; they live in ``model.extras``, train
  with the network (same optimiser, L2 term over their conv/linear weights), are saved with
  it and packed with it.
- **EMA evaluation model** (protocol ``ema_decay``, ``ema_decay_early``/``ema_early_steps``):
  the engine keeps an exponential moving average of the weights, evaluates it, and hands it to
  the loss as ``ctx.ema_model`` (a teacher), packed runs included; ``needs_ema = True`` makes a
  grid without it an error when read.
- **Labels** (``ctx.labels``, :class:`ssl_bench.data.RunLabels`): the run's label vector; a
  method may ``assign`` pseudo-labels or ``reset``; the labeled sampler follows it.
- **Where labels come from** (``label_source``): ``"given"`` (the task's labeled samples; a
  run with n_labeled = 0 is an error when the grid is read), ``"own"`` (the method labels
  training images itself with ``ctx.labels.assign`` before the first step, e.g. k-means
  pseudo-labels: labeled batches are drawn from its labels, also with n_labeled = 0) or
  ``"none"`` (never reads labeled batches: clustering).
- **Embeddings** (:meth:`Method.embed`): what retrieval metrics and figures embed; a method
  with its own layers on the feature map (attention, spatial assembly) overrides it. An
  evaluation that needs scores and embeddings calls :meth:`Method.predict_and_embed`: one
  backbone pass while neither ``predict`` nor ``embed`` is overridden.
- **Result columns** (``result_columns``): diagnostics whose last value becomes a column of
  the run's row (e.g. ``labels_assigned_error``).
- **Optimiser restarts** (``ctx.restart_optimizer()``): a fresh optimiser and schedule from
  the next step (generations).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import UserError
from .params import Param, params_of_class, validate


@dataclasses.dataclass
class Batch:
    """One training step's data, normalised and on the device. ``x_unlabeled`` is None when the
    run has no unlabeled data (n_unlabeled = 0); ``x_labeled``/``y_labeled`` are None when the
    task gives no labels (clustering). ``views[role]`` holds the method's declared views of
    that role's batch, in the declared order; ``idx_*`` the sampled images' indices (into the
    labeled domain's training set, and into the unlabeled set's images)."""

    x_labeled: torch.Tensor | None
    y_labeled: torch.Tensor | None
    x_unlabeled: torch.Tensor | None
    idx_labeled: torch.Tensor | None = None
    idx_unlabeled: torch.Tensor | None = None
    views: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainContext:
    """What a method may look at besides the batch: the step, the run's length, its data on the
    device (``data.train_x[data.unlabeled]`` etc.), the device and a seeded generator."""

    step: int
    steps: int
    num_classes: int
    device: torch.device
    data: Any
    generator: torch.Generator
    #: the run's label vector (``assign``, ``reset``); None inside a pack
    labels: Any = None
    #: the EMA of the network's weights when the run sets ema_decay > 0 (a teacher), else None
    ema_model: Any = None
    #: set by :meth:`restart_optimizer`; the engine rebuilds the optimiser and clears it
    restart_requested: bool = False

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1): for ramps."""
        return self.step / max(self.steps, 1)

    def restart_optimizer(self) -> None:
        """Start a fresh optimiser and learning-rate schedule at the next step (generations)."""
        self.restart_requested = True


class Method:
    """Base class of all methods. Subclasses set ``name`` and implement :meth:`loss_terms`."""

    name: ClassVar[str] = ""
    #: whether the method uses unlabeled batches at all (the loop skips sampling them if not)
    uses_unlabeled: ClassVar[bool] = True
    #: the views of each batch the method needs beyond the plain one: role -> pipeline names
    #: (``ssl_bench.views``), e.g. ``{"unlabeled": ("weak", "strong")}``
    views: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: names of ``loss_terms`` entries that are monitored values, not loss: averaged into the
    #: curve's ``loss_terms`` like the others but never added to the loss (e.g. FixMatch's mask
    #: rate); they must not need gradients
    monitored: ClassVar[tuple[str, ...]] = ()
    #: whether the loss reads ``ctx.ema_model`` (a teacher): runs must then set ema_decay > 0,
    #: checked when the grid is read
    needs_ema: ClassVar[bool] = False
    #: names of :meth:`diagnostics` (or of the label diagnostics ``labels_assigned``,
    #: ``labels_assigned_accuracy``, ``labels_assigned_error``) whose value at the last evaluation
    #: becomes a float column of the run's row, for tables (e.g. the discovered labels' error)
    result_columns: ClassVar[tuple[str, ...]] = ()
    #: where the labels of labeled batches come from: "given" (the task's labeled samples; the
    #: run needs n_labeled > 0), "own" (the method assigns them with ``ctx.labels.assign`` in
    #: ``on_train_start``, e.g. k-means pseudo-labels: batches are drawn even with n_labeled = 0)
    #: or "none" (the method reads no labeled batch: none is drawn). Checked when the grid is read.
    label_source: ClassVar[str] = "given"

    def __init__(self, **hparams: Any):
        values = validate(self.params(), hparams, where=f"methods.{self.name}.")
        for key, value in values.items():
            setattr(self, key, value)
        self.hparams = values

    @classmethod
    def params(cls) -> list[Param]:
        return params_of_class(cls, stop=Method)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- the objective
    def loss_terms(self, batch: Batch, model: nn.Module, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Return the named scalar loss terms of this step (already weighted); the loop sums them,
        except those named in ``monitored``, which it only records."""
        raise NotImplementedError

    def check(self, plan) -> None:
        """Reject settings that cannot work with a run's data, before any run trains (raise
        UserError): ``plan`` is the run's :class:`ssl_bench.task.Plan` (its subsets, label
        vector, domains). E.g. more k-means clusters than unlabeled images."""

    # ---------------------------------------------------------------- the network
    def head_width(self, num_outputs: int) -> int:
        """Outputs of the classifier head; ``num_outputs`` is the task's (classes, clusters).
        Override e.g. for over-clustering."""
        return num_outputs

    def build_modules(self, model: nn.Module, num_outputs: int) -> dict[str, nn.Module]:
        """Trainable modules the method owns (centroids, heads, discriminators): name ->
        module, created once per run after the network (from the run's seed). They are
        ``model.extras[name]``, in the optimiser, in saved models and in packs."""
        return {}

    # ---------------------------------------------------------------- lifecycle hooks
    def on_train_start(self, model: nn.Module, ctx: TrainContext) -> None:
        """Called once before the first step."""

    def on_step_start(self, model: nn.Module, ctx: TrainContext) -> None:
        """Called before each step's batch is drawn."""

    def on_step_end(self, model: nn.Module, ctx: TrainContext) -> None:
        """Called after each optimiser step."""

    def diagnostics(self, model: nn.Module, ctx: TrainContext) -> dict[str, Any]:
        """Extra numbers for the curve at each evaluation (scalars or 0-d device tensors),
        e.g. the accuracy of labels the method discovered."""
        return {}

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network to evaluate (e.g. an EMA teacher); by default the trained one."""
        return model

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a normalised batch; the prediction is their argmax."""
        return model(x)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of a normalised batch, for embedding metrics (recall@K, k-means) and figures;
        by default the backbone's (``model.embed``). A method with its own layers between the
        backbone's feature map and its embedding (``model.feature_map`` / ``model.embed_map``)
        overrides this, and uses it in its loss too."""
        return model.embed(x)

    def predict_and_embed(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`predict`, :meth:`embed`) of one batch, for an evaluation that needs both: one
        pass through the backbone while the method keeps the default ``predict`` and ``embed`` (the
        head on the embedding is exactly ``model(x)``), else the two methods."""
        from .backbone import Classifier

        cls = type(self)
        if cls.predict is Method.predict and cls.embed is Method.embed and type(model).forward is Classifier.forward:
            embeddings = model.embed(x)
            return model.head(embeddings), embeddings
        return self.predict(model, x), self.embed(model, x)

    @classmethod
    def figures(cls) -> dict[str, Any]:
        """The method's qualitative figures for ``ssl-bench figure KIND``: name -> function
        ``draw(view: ssl_bench.figures.FigureView, **keywords) -> matplotlib.figure.Figure``;
        typed keywords with defaults are the figure's settings (``--arg KEY=VALUE``). The core's
        kinds (``neighbours``, ``tsne``) are every run's."""
        return {}


#: the values of :attr:`Method.label_source`
LABEL_SOURCES = ("given", "own", "none")


def check_method_class(cls: Any, provider: str) -> None:
    """Reject a malformed method class at discovery (a plugin author's error)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{provider}: ssl_bench_methods returned {cls!r}, which is not a Method subclass")
    if not cls.name:
        raise TypeError(f"{provider}: method class {cls.__name__} has no name")
    try:
        cls.params()
    except TypeError as exc:
        raise TypeError(f"{provider}: {exc}") from None
    if cls.label_source not in LABEL_SOURCES:
        raise TypeError(f"{provider}: method {cls.name}: label_source must be one of {', '.join(LABEL_SOURCES)}, "
                        f"got {cls.label_source!r}")
    for role, names in cls.views.items():
        if role not in ("labeled", "unlabeled") or isinstance(names, str):
            raise TypeError(f"{provider}: method {cls.name}: views must map 'labeled'/'unlabeled' to a tuple of "
                            f"pipeline names, got {role!r}: {names!r}")


__all__ = ["Batch", "Method", "TrainContext", "UserError"]
