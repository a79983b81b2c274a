"""Training runs: the loop every method shares, for one run or for a pack of runs (a solo run
is a pack of one).

The loop, as named steps (:func:`_train`)::

    plan the data (the task draws each run's subsets, labels and evaluation sets)
    build the networks (seeded), the method's own modules, the optimiser, the EMA copy
    for each step:
        start_step      method hooks (solo runs)
        draw_batches    each run's labeled / unlabeled batch and the method's views
        loss_terms      the method's objective (one vmap over the pack)
        update          backward, optimiser, schedule, EMA; method hooks; optimiser restarts
        bookkeeping     losses summed and divergence flagged on the device
        check           every check_every steps: one host read (divergence, queued evaluations)
        evaluate        every eval_every steps: queue predictions/embeddings of every
                        evaluation set; metrics are computed when the queue is read

The loop is plain and the same for all methods; a method contributes loss terms and, if it
needs them, lifecycle hooks (see ssl_bench.method). Everything random derives from the run
seed: the subsets (numpy streams), the network initialisation (torch's global generator,
seeded right before the network is built) and the batches (a generator on the device).

The hot path stays on the device:

- the data set is resident on the device as uint8 (copied once per device and shared by every
  run, ``ssl_bench.data.resident``); batches are gathered by index there and augmented with
  batched tensor ops (``ImageDataset.augment``);
- the host never waits for the device inside a step: losses are summed on the device, the
  divergence check (a non-finite loss) reads one small tensor every ``EngineOptions.check_every``
  steps and at each evaluation, and evaluations are queued behind the training steps; their
  numbers are read at the next check, so evaluation is off the critical path;
- optional, each behind its own switch and each with a parity test against the plain path
  (tests/test_engine.py): bf16 autocast, channels_last, torch.compile, CUDA graphs.

**Packing.** Runs that differ only in seed and data subsets (same network shape, method,
hyperparameters and schedule: :func:`pack_key`) can train together: the K networks' parameters
are stacked (``torch.func.stack_module_state``) and one ``torch.vmap`` of
``torch.func.functional_call`` computes all K objectives in one set of kernels. Each run keeps
its own initialisation, subsets, batches and generator, and Adam/SGD act element-wise, so a
packed run computes what it would alone, up to floating-point summation order (test:
tests/test_engine.py::test_packed_runs_match_solo_runs). Methods with lifecycle hooks (EMA
teachers, re-clustering) or whose loss draws random numbers are trained solo: packing is an
optimisation, never a change of outcome, and a pack that cannot train falls back to solo runs.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
import traceback
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .backbone import Classifier, create_model, l2_penalty
from .data import DeviceData, ImageDataset, Subsets
from .errors import UserError
from .grid import plugin_args
from .method import Batch, Method, TrainContext
from .metric import Collected, parse_metric_name, summary_suffix
from .task import EvalSpec, Plan
from .views import view_pipeline

EVAL_BATCH = 1000
#: settings that may differ between the runs of one pack: they change only which samples a run sees
PACKABLE_KEYS = ("seed", "n_labeled", "n_unlabeled", "unlabeled_overlap")
#: lifecycle hooks a packable method must not override (they act on one module)
HOOKS = ("on_train_start", "on_step_start", "on_step_end", "eval_model", "diagnostics")
#: curve values stored as columns of their own (the rest go into the curve's metrics map)
CURVE_COLUMNS = ("test_error", "val_error")


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How runs execute, not what they compute: none of these enters a run id; the result row
    records them (column ``engine``). Each has a parity test against the plain path."""

    #: autocast forward passes to bfloat16 (weights, optimiser state and losses stay float32)
    bf16: bool = False
    #: channels_last memory format for the network and its input batches (solo runs)
    channels_last: bool = False
    #: torch.compile the objective (forward, loss and, through AOTAutograd, backward)
    compile: bool = False
    #: capture the compiled objective in CUDA graphs (torch.compile mode "reduce-overhead"); CUDA only
    cuda_graphs: bool = False
    #: steps between host reads of the divergence flag (a read also happens at every evaluation)
    check_every: int = 50

    def validate(self, device: torch.device) -> None:
        if self.cuda_graphs and device.type != "cuda":
            raise UserError(f"--cuda-graphs needs a CUDA device (the runs would train on {device}); "
                            f"drop --cuda-graphs or use --device cuda")
        if self.check_every < 1:
            raise UserError(f"check_every must be at least 1, got {self.check_every}")

    def describe(self) -> str:
        """The options in effect, e.g. ``"bf16,channels_last"``; ``"plain"`` if none."""
        flags = [f.name for f in dataclasses.fields(self) if f.type in (bool, "bool") and getattr(self, f.name)]
        return ",".join(flags) or "plain"


@dataclasses.dataclass
class RunOutcome:
    status: str  # ok | diverged | failed
    error: str | None
    metrics: dict[str, float]
    curves: list[dict]
    subsets: Subsets | None
    steps_done: int
    wall_s: float
    model: torch.nn.Module | None = None  # the network to evaluate (method.eval_model), if training finished
    pack_size: int = 1  # runs trained together with this one (1: alone)
    started: object = None  # UTC datetimes, stamped by the executor
    finished: object = None
    traceback: str | None = None  # a failed run's full traceback (the row keeps ``error``, its last line)


#: ``ssl-bench run --debug``: a failing run raises (with its traceback) instead of being recorded
#: as failed while the grid goes on; in-process only (worker pools and Ray record it as usual)
RAISE_RUN_ERRORS = False


# --------------------------------------------------------------------------- building blocks
def as_roles(data: ImageDataset | dict[str, ImageDataset]) -> dict[str, ImageDataset]:
    """A run's data sets by role; a bare data set is the source."""
    return {"source": data} if isinstance(data, ImageDataset) else data


def build_method(config: dict, registry) -> Method:
    return registry.method(config["method"])(**plugin_args(config, "method"))


def build_model(config: dict, registry, dataset: ImageDataset, num_outputs: int | None = None,
                method: Method | None = None) -> Classifier:
    """The run's network (backbone, head of the task's width as the method wants it, the
    method's own modules), built from the global generator: seed it first."""
    num_outputs = dataset.num_classes if num_outputs is None else num_outputs
    model = create_model(config["backbone"], dataset.input_shape,
                         method.head_width(num_outputs) if method else num_outputs, registry=registry,
                         pretrained=config.get("pretrained") or None, **plugin_args(config, "backbone"))
    if method is not None:
        model.extras.update(method.build_modules(model, num_outputs))
    return model


def plan_run(config: dict, registry, data: dict[str, ImageDataset]) -> Plan:
    return registry.task(config.get("task", "ssl"))().plan(config, data)


def pack_key(config: dict) -> str:
    """Runs with equal keys can share a pack: everything equal except which samples they see
    (and whether they have unlabeled data at all, which changes the objective)."""
    from .results import config_json

    rest = {k: v for k, v in config.items() if k not in PACKABLE_KEYS}
    return config_json([rest, config["n_unlabeled"] != 0])


def packable(method_cls: type[Method]) -> bool:
    """A method can be packed if it keeps no per-run state outside the network: it overrides
    none of the lifecycle hooks."""
    return all(getattr(method_cls, hook) is getattr(Method, hook) for hook in HOOKS)


#: the evaluated values of a classic run: column -> (evaluation set, metric, higher is better)
DEFAULT_COLUMNS = {"test_error": ("test", "error", False), "val_error": ("val", "error", False)}


def summarise(curves: list[dict], last_k: int,
              columns: dict[str, tuple[str, str, bool]] | None = None) -> dict[str, float]:
    """The run's summaries of every evaluated value (``ssl_bench.metric.SUMMARIES``). For
    ``test_error``: ``test_error`` (final), ``test_error_min`` (best over training: selection
    on the test set), ``test_error_last_k`` (median of the last k) and ``test_error_best_val``
    (at the evaluation where ``val_error`` is best); the validation set's own values are
    summarised as final only. ``columns``: value -> (set, metric, higher is better), the main
    one first (the classic ``test_error`` and ``val_error`` are always there)."""
    nan = float("nan")
    columns = {**(columns or {}), **{k: v for k, v in DEFAULT_COLUMNS.items() if k not in (columns or {})}}
    series = {key: np.array([c.get("metrics", {}).get(key, c.get(key, nan)) for c in curves] or [nan], dtype=float)
              for key in columns}
    out = {}
    for key, (split, metric, up) in columns.items():
        values = series[key]
        out[key] = float(values[-1])
        if split == "val":
            continue
        finite = not np.all(np.isnan(values))
        out[key + summary_suffix("best", up)] = float(np.nanmax(values) if up else np.nanmin(values)) if finite else nan
        out[key + "_last_k"] = float(np.median(values[-last_k:])) if curves else nan
        val = series.get(f"val_{metric}")
        if curves and val is not None and not np.all(np.isnan(val)):
            out[key + "_best_val"] = float(values[int(np.nanargmax(val) if up else np.nanargmin(val))])
        else:
            out[key + "_best_val"] = nan
    return out


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    """The protocol's optimiser: ``optimizer``, ``lr``, and the ``optim`` sub-table (momentum,
    nesterov, betas, decoupled weight decay)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    optim = config.get("optim") or {}
    decay = config["weight_decay"] if optim.get("weight_decay_style") == "decoupled" else 0.0
    if config["optimizer"] == "adam":
        betas = tuple(optim.get("betas", (0.9, 0.999)))
        if decay:
            return torch.optim.AdamW(params, lr=config["lr"], betas=betas, weight_decay=decay)
        return torch.optim.Adam(params, lr=config["lr"], betas=betas)
    return torch.optim.SGD(params, lr=config["lr"], momentum=optim.get("momentum", 0.9),
                           nesterov=optim.get("nesterov", False), weight_decay=decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: dict):
    """The learning-rate schedule (None: constant): step decay (``lr_decay_every``,
    ``lr_decay_factor``), cosine (``lr * cos(cosine_fraction * pi * t / steps)``) or constant,
    after a linear warm-up of ``optim.warmup_steps``."""
    optim = config.get("optim") or {}
    schedule, warmup, steps = optim.get("schedule", "step"), optim.get("warmup_steps", 0), config["steps"]
    if schedule == "step" and not warmup:  # the plain step decay (bit-identical to earlier versions)
        every = config["lr_decay_every"]
        return torch.optim.lr_scheduler.StepLR(optimizer, every, config["lr_decay_factor"]) if every else None
    if schedule == "constant" and not warmup:
        return None
    fraction = optim.get("cosine_fraction", 0.5)

    def factor(t: int) -> float:
        ramp = min(1.0, (t + 1) / warmup) if warmup else 1.0
        if schedule == "cosine":
            return ramp * math.cos(fraction * math.pi * t / steps)
        if schedule == "step" and config["lr_decay_every"]:
            return ramp * config["lr_decay_factor"] ** (t // config["lr_decay_every"])
        return ramp
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- the objective
class Objective(nn.Module):
    """One run's objective as a module: ``forward(tensors)`` returns the method's loss terms
    (plus the protocol's L2 term); with ``mode="scores"`` / ``"scores_and_embed"`` the evaluation
    network's class scores (and embeddings) of ``tensors["x"]``. As a module it can be compiled,
    and its parameters (and its EMA copy's) swapped for a packed run's (functional_call)."""

    def __init__(self, model: Classifier, method: Method, ctx: TrainContext, l2_weight: float,
                 ema: Classifier | None = None):
        super().__init__()
        self.model = model
        self.ema = ema
        self.method = method
        self.ctx = ctx
        self.l2_weight = l2_weight

    def eval_net(self) -> nn.Module:
        return self.method.eval_model(self.ema if self.ema is not None else self.model)

    def forward(self, tensors: dict[str, torch.Tensor], mode: str = "loss"):
        if mode == "scores":
            return self.method.predict(self.eval_net(), tensors["x"])
        if mode == "scores_and_embed":
            return self.method.predict_and_embed(self.eval_net(), tensors["x"])
        terms = self.method.loss_terms(batch_from_tensors(tensors), self.model, self.ctx)
        check_terms(self.method, terms)
        if self.l2_weight:
            terms["l2"] = self.l2_weight * l2_penalty(self.model)
        return terms


def check_terms(method: Method, terms) -> None:
    """A method's loss terms must be a dict of scalar float tensors (shapes are static, so this
    costs nothing on the device and holds under vmap and torch.compile)."""
    where = f"methods.{method.name}"
    if not isinstance(terms, dict):
        raise UserError(f"{where}.loss_terms returned {type(terms).__name__}; it must return a dict of "
                        f"name -> scalar tensor")
    for name, value in terms.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where} returned term {name!r} as {type(value).__name__}; loss terms must be "
                            f"scalar tensors (torch.as_tensor won't carry a gradient: compute it with torch)")
        if value.dim() != 0:
            raise UserError(f"{where} returned term {name!r} of shape {list(value.shape)}; loss terms must be "
                            f"scalars (reduce it, e.g. .mean())")
        if not value.is_floating_point():
            raise UserError(f"{where} returned term {name!r} of dtype {value.dtype}; loss terms must be "
                            f"floating-point scalars")


def batch_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """A batch as a flat dict of tensors (what vmap and torch.compile take)."""
    out = {k: getattr(batch, k) for k in ("x_labeled", "y_labeled", "x_unlabeled", "idx_labeled", "idx_unlabeled")
           if getattr(batch, k) is not None}
    for role, views in batch.views.items():
        for i, view in enumerate(views):
            out[f"view.{role}.{i}"] = view
    return out


def batch_from_tensors(tensors: dict[str, torch.Tensor]) -> Batch:
    views: dict[str, list[torch.Tensor]] = {}
    for key in sorted(k for k in tensors if k.startswith("view.")):
        _, role, _ = key.split(".")
        views.setdefault(role, []).append(tensors[key])
    return Batch(tensors.get("x_labeled"), tensors.get("y_labeled"), tensors.get("x_unlabeled"),
                 tensors.get("idx_labeled"), tensors.get("idx_unlabeled"), views)


class _PerRunOnly:
    """Stands in for ``ctx.data`` in a pack, where it is not one run's."""

    def __init__(self, what: str):
        self.what = what

    def __getattr__(self, name):
        raise RuntimeError(f"ctx.{self.what} is per run and not available to a packed loss; "
                           f"the runs are trained one by one instead")


class _Networks:
    """The K networks of a pack behind one interface; K = 1 is a plain module (no torch.func).
    With ``ema_decay`` > 0 each network has an EMA copy, updated after every step, evaluated
    and handed to the loss as ``ctx.ema_model``."""

    def __init__(self, models: list[Classifier], method: Method, ctxs: list[TrainContext], config: dict,
                 options: EngineOptions, device: torch.device):
        self.models, self.method, self.k = models, method, len(models)
        self.decay = config.get("ema_decay", 0.0)
        self.early_decay, self.early_steps = config.get("ema_decay_early", 0.0), config.get("ema_early_steps", 0)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if options.bf16
                         else contextlib.nullcontext())
        optim = config.get("optim") or {}
        l2 = config["weight_decay"] if optim.get("weight_decay_style", "l2_loss") == "l2_loss" else 0.0
        if self.k == 1:
            if options.channels_last:
                models[0].to(memory_format=torch.channels_last)
            ema = _frozen_copy(models[0]) if self.decay else None
            self.objective = Objective(models[0], method, ctxs[0], l2, ema)
            ctxs[0].ema_model = ema
            self.params = list(models[0].parameters())
            live, copies = models[0].state_dict(), ema.state_dict() if ema is not None else {}
            self.ema_pairs = [(copies[name], live[name]) for name in copies]  # state_dict tensors share storage
            fn = self.objective
        else:
            # no per-run data or generator inside vmap; random ops there fail (randomness="error")
            ctx = dataclasses.replace(ctxs[0], data=_PerRunOnly("data"), generator=None, labels=None)
            ema = _frozen_copy(models[0]) if self.decay else None
            self.objective = Objective(models[0], method, ctx, l2, ema)
            ctx.ema_model = ema  # functional_call swaps in each run's EMA weights
            params, buffers = torch.func.stack_module_state(models)
            live = {**params, **buffers}
            copies = {name: value.detach().clone() for name, value in live.items()} if ema is not None else {}
            self.ema_pairs = [(copies[name], live[name]) for name in copies]
            self.stacked = {**{f"model.{k}": v for k, v in live.items()}, **{f"ema.{k}": v for k, v in copies.items()}}
            self.params = list(params.values())
            fn = self._vmapped
        if options.compile or options.cuda_graphs:
            fn = torch.compile(fn, mode="reduce-overhead" if options.cuda_graphs else None)
        self.fn = fn

    def _vmapped(self, tensors, mode="loss", shared=False):
        def one(state, tensors):
            return torch.func.functional_call(self.objective, state, (tensors,), {"mode": mode})

        return torch.vmap(one, in_dims=(0, None if shared else 0))(self.stacked, tensors)

    def loss_terms(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term as a K-vector (one entry per run)."""
        with self.autocast:
            terms = self.fn(tensors)
        return {name: value.float().reshape(self.k) for name, value in terms.items()}

    def decay_at(self, step: int) -> float:
        """The EMA decay of the update after step ``step`` (0-based): ema_decay_early during the
        first ema_early_steps steps when set, ema_decay after them."""
        return self.early_decay if self.early_decay and step < self.early_steps else self.decay

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        if not self.ema_pairs:
            return
        floats = [(e, p) for e, p in self.ema_pairs if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [p.detach() for _, p in floats], 1.0 - self.decay_at(step))
        for e, p in self.ema_pairs:
            if not e.is_floating_point():
                e.copy_(p)

    @torch.no_grad()
    def collect(self, x: torch.Tensor, normalise, want_embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predictions (argmax of the method's scores) and, if asked, embeddings of the
        evaluation network, per run: K x N (and K x N x D), on the device, not read here. ``x``
        is shared by all runs (N x C x H x W uint8) or per run (K x N x C x H x W)."""
        nets = [self.objective.eval_net()] if self.k == 1 else [self.objective]
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        chunk = max(EVAL_BATCH // self.k, 50)
        shared = x.dim() == 4
        predictions, embeddings = [], []
        for start in range(0, x.shape[0 if shared else 1], chunk):
            part = x[start:start + chunk] if shared else x[:, start:start + chunk]
            inputs = normalise(part) if shared else torch.stack([normalise(p) for p in part])
            with self.autocast:
                # one pass for both where the method allows (Method.predict_and_embed)
                if self.k > 1:
                    out = self._vmapped({"x": inputs}, "scores_and_embed" if want_embeddings else "scores", shared)
                elif want_embeddings:
                    out = tuple(t[None] for t in self.method.predict_and_embed(nets[0], inputs if shared else inputs[0]))
                else:
                    out = self.method.predict(nets[0], inputs if shared else inputs[0])[None]
                scores, emb = out if want_embeddings else (out, None)
            predictions.append(scores.argmax(-1))
            if emb is not None:
                embeddings.append(emb.float())
        for n, mode in zip(nets, modes):
            n.train(mode)
        return torch.cat(predictions, 1), (torch.cat(embeddings, 1) if want_embeddings else None)

    def trained_model(self, k: int) -> nn.Module:
        """Run ``k``'s evaluation network as a module (its EMA copy when the run keeps one)."""
        if self.k == 1:
            return self.objective.eval_net()
        model = self.models[k]
        source = "ema." if self.ema_pairs else "model."
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_(self.stacked[source + name][k])
        return self.method.eval_model(model)


def _frozen_copy(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema




# --------------------------------------------------------------------------- one pack
def train_run(config: dict, registry, data, device: torch.device,
              on_step: Callable[[int, float, float], None] | None = None,
              options: EngineOptions = EngineOptions()) -> RunOutcome:
    """Train and evaluate one run. Divergence and exceptions are outcomes, not crashes.
    ``data``: the run's data sets by role, or its one data set."""
    return train_pack([config], registry, data, device, on_step, options)[0]


def train_pack(configs: Sequence[dict], registry, data, device: torch.device,
               on_step: Callable[[int, float, float], None] | None = None,
               options: EngineOptions = EngineOptions(), log: Callable[[str], None] | None = None) -> list[RunOutcome]:
    """Train runs of equal :func:`pack_key` together (one run: the plain loop). If the pack cannot
    be trained packed (a method with hooks, randomness inside the loss, an operation vmap does
    not support) its runs are trained one by one, so the outcome never depends on packing."""
    data = as_roles(data)
    if len(configs) > 1:
        keys = {pack_key(c) for c in configs}
        if len(keys) > 1:
            raise ValueError("train_pack: the runs differ in more than seed and data subsets (see pack_key)")
        if packable(registry.method(configs[0]["method"])):
            try:
                return _train(list(configs), registry, data, device, on_step, options, packed=True)
            except Exception as exc:  # packing is an optimisation: fall back to solo runs
                if log:
                    reason = (str(exc).strip().splitlines() or [""])[0][:200]
                    log(f"note: {len(configs)} runs could not train packed ({type(exc).__name__}: {reason}); "
                        f"training them one by one")
    return [_train([c], registry, data, device, on_step, options, packed=False)[0] for c in configs]


@dataclasses.dataclass
class _RunState:
    config: dict
    plan: Plan | None = None
    data: DeviceData | None = None
    ctx: TrainContext | None = None
    views: dict[str, list] = dataclasses.field(default_factory=dict)  # role -> pipelines
    curves: list[dict] = dataclasses.field(default_factory=list)
    status: str = "running"
    error: str | None = None
    traceback: str | None = None
    steps_done: int = 0
    model: nn.Module | None = None


@dataclasses.dataclass
class _EvalSet:
    """An evaluation set on the device: images shared by the pack or stacked per run."""

    spec: EvalSpec
    x: torch.Tensor
    labels: torch.Tensor
    normalise: Callable
    metrics: tuple[str, ...]
    embeddings: bool


class _Pack:
    """The state of one pack's training, with the loop's steps as methods."""

    def __init__(self, configs: list[dict], registry, device: torch.device, options: EngineOptions, packed: bool):
        self.registry, self.device, self.options, self.packed = registry, device, options, packed
        self.config = configs[0]  # everything but the subsets is shared by a pack
        self.runs = [_RunState(c) for c in configs]
        self.step = 0

    # ---------------------------------------------------------------- setup
    def build(self, data: dict[str, ImageDataset]) -> None:
        config, device = self.config, self.device
        self.method = build_method(config, self.registry)
        memory_format = (torch.channels_last if self.options.channels_last and not self.packed
                         else torch.contiguous_format)
        models = []
        for run in self.runs:
            seed = run.config["seed"]
            run.plan = plan = plan_run(run.config, self.registry, data)
            self.method.check(plan)
            torch.manual_seed(seed)
            labeled = plan.domains[plan.labeled_domain]
            models.append(build_model(run.config, self.registry, labeled, plan.num_outputs, self.method).to(device))
            augmentation = config.get("augmentation", "standard")
            run.data = DeviceData(labeled, plan.subsets, device, seed, augment=config["augment"],
                                  augmentation=None if augmentation == "standard" else
                                  functools.partial(view_pipeline, augmentation, self.registry),
                                  memory_format=memory_format, labels=plan.labels,
                                  unlabeled_dataset=plan.domains[plan.unlabeled_domain],
                                  unlabeled_from_pool=plan.unlabeled_from_pool, num_classes=plan.num_outputs,
                                  hide_labels=not self.registry.task(config.get("task", "ssl")).uses_labels)
            run.ctx = TrainContext(step=0, steps=config["steps"], num_classes=plan.num_outputs, device=device,
                                   data=run.data, generator=run.data.generator, labels=run.data.labels)
            domains = {"labeled": run.data.domain, "unlabeled": run.data.unlabeled_domain}
            run.views = {role: [view_pipeline(name, self.registry, domains[role]) for name in names]
                         for role, names in self.method.views.items()}
        self.models = models
        self.nets = _Networks(models, self.method, [r.ctx for r in self.runs], config, self.options, device)
        self.new_optimizer()
        plan = self.runs[0].plan
        source = self.method.label_source  # "own": the method labels images itself (ctx.labels.assign)
        self.want_labeled = source == "own" or (source == "given" and len(plan.subsets.labeled) > 0)
        self.want_unlabeled = self.method.uses_unlabeled and config["unlabeled_batch"] > 0
        self.eval_sets = self._eval_sets()
        self.k = len(self.runs)
        self.running: dict[str, torch.Tensor] = {}
        self.n_running = 0
        self.pending: list[tuple] = []  # evaluations not yet read
        self.first_bad = torch.full((self.k,), -1, dtype=torch.int64, device=device)
        self.at_bad: dict[str, torch.Tensor] = {}  # the loss and its terms at each run's first bad step
        self.shown_loss = self.shown_error = float("nan")
        for model in models:
            model.train()
        if not self.packed:
            self.method.on_train_start(models[0], self.runs[0].ctx)

    def new_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.nets.params, self.config)
        self.scheduler = make_schedule(self.optimizer, self.config)

    def _eval_sets(self) -> list[_EvalSet]:
        """The plan's evaluation sets on the device, with what their metrics need collected. A
        pack shares every set but the validation sets, which are stacked per run."""
        task = self.registry.task(self.config.get("task", "ssl"))()
        specs = self.runs[0].plan.eval_sets
        declared = task.eval_set_names(self.config)
        if [s.name for s in specs] != declared:  # the result columns were made from the declared names
            raise RuntimeError(f"task {task.name!r}: the plan's evaluation sets {[s.name for s in specs]} differ "
                               f"from its eval_set_names {declared}")
        embeddings: set[str] = set()
        for spec in specs:
            for name in task.eval_metrics(self.config, spec.name):
                needs = self.registry.metric(name).needs
                if "embeddings" in needs:
                    embeddings.add(spec.name)
                if "other" in needs and spec.other:
                    embeddings.add(spec.other)

        def images_and_labels(run: _RunState, spec: EvalSpec):
            domain = run.data.domain if spec.domain == run.plan.labeled_domain else run.data.unlabeled_domain
            x, y = _split(domain, spec, run.plan)
            labels = run.plan.eval_labels.get(spec.name)
            return x, (y if labels is None else torch.as_tensor(labels, device=self.device)), domain

        sets = []
        for spec in specs:
            x, y, domain = images_and_labels(self.runs[0], spec)
            if spec.split == "validation" and self.packed:
                per_run = [images_and_labels(run, spec) for run in self.runs]
                x, y = torch.stack([p[0] for p in per_run]), torch.stack([p[1] for p in per_run])
            sets.append(_EvalSet(spec, x, y, domain.normalise, task.eval_metrics(self.config, spec.name),
                                 spec.name in embeddings))
        return sets

    # ---------------------------------------------------------------- the steps
    def start_step(self, step: int) -> None:
        self.step = step
        if not self.packed:
            self.runs[0].ctx.step = step
            self.method.on_step_start(self.models[0], self.runs[0].ctx)
        else:
            self.nets.objective.ctx.step = step

    def draw_batches(self) -> dict[str, torch.Tensor]:
        """This step's batches: one run's, or every run's stacked (K x ...), each from its own generator."""
        drawn = [batch_tensors(self._draw(run)) for run in self.runs]
        if not self.packed:
            return drawn[0]
        return {key: torch.stack([d[key] for d in drawn]) for key in drawn[0]}

    def _draw(self, run: _RunState) -> Batch:
        config, data = run.config, run.data
        batch = Batch(None, None, None)
        if self.want_labeled:
            idx = data.labeled_indices(config["labeled_per_class"], config.get("sampler", "class_balanced"),
                                       config.get("labeled_batch", 0), config.get("classes_per_batch", 0))
            images = data.train_x[idx]
            batch.x_labeled, batch.y_labeled, batch.idx_labeled = data.training_batch(images), data.labels.current[idx], idx
            if "labeled" in run.views:
                batch.views["labeled"] = [data.view(images, p, data.domain) for p in run.views["labeled"]]
        if self.want_unlabeled:
            idx = data.unlabeled_indices(config["unlabeled_batch"])
            if idx is not None:
                images = data.unlabeled_x[idx]
                batch.x_unlabeled = data.training_batch(images, data.unlabeled_domain)
                batch.idx_unlabeled = idx
                if "unlabeled" in run.views:
                    batch.views["unlabeled"] = [data.view(images, p, data.unlabeled_domain)
                                                for p in run.views["unlabeled"]]
        return batch

    def update(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backward, optimiser and schedule, EMA; the method's end-of-step hook and any
        optimiser restart it asked for. Returns the loss of each run."""
        loss = torch.stack([v for k, v in terms.items() if k not in self.method.monitored]).sum(0)  # one per run
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # runs are independent: each gets its own gradient
        self.optimizer.step()
        if self.scheduler:
            self.scheduler.step()
        self.nets.update_ema(self.step)
        if not self.packed:
            ctx = self.runs[0].ctx
            self.method.on_step_end(self.models[0], ctx)
            if ctx.restart_requested:
                ctx.restart_requested = False
                self.new_optimizer()
        return loss

    @torch.no_grad()
    def bookkeeping(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Losses summed and the first non-finite step flagged, on the device (no host sync)."""
        newly_bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, self.step, self.first_bad)
        for name, value in (("loss", loss), *terms.items()):
            value = value.detach().double()
            self.running[name] = self.running[name] + value if name in self.running else value
            self.at_bad[name] = torch.where(newly_bad, value, self.at_bad[name] if name in self.at_bad else value)
        self.n_running += 1

    def check(self) -> bool:
        """One host read: which runs diverged, and every queued evaluation (now finished).
        Returns whether any run is still training."""
        for i, bad_step in enumerate(self.first_bad.tolist()):
            run = self.runs[i]
            if bad_step >= 0 and run.status == "running":
                run.status, run.steps_done = "diverged", bad_step
                values = {name: value[i].item() for name, value in self.at_bad.items()}
                shown = ", ".join(f"{n}={v:.4g}" for n, v in values.items() if n != "loss")
                run.error = f"loss is {values['loss']} at step {bad_step} (terms: {shown})"
        self.read_evaluations()
        return any(r.status == "running" for r in self.runs)

    @torch.no_grad()
    def evaluate(self) -> None:
        """Queue this evaluation: mean losses since the last one, every evaluation set's
        predictions (and embeddings where a metric needs them), the method's diagnostics."""
        means = {name: total / self.n_running for name, total in self.running.items()}
        self.running, self.n_running = {}, 0
        point = {"step": self.step + 1 if self.config["steps"] else 0, "lr": self.optimizer.param_groups[0]["lr"]}
        collected = {}
        for s in self.eval_sets:
            predictions, embeddings = self.nets.collect(s.x, s.normalise, s.embeddings)
            collected[s.spec.name] = (predictions, embeddings, s.labels)
        diagnostics = {}
        if not self.packed:
            run, model = self.runs[0], self.models[0]
            diagnostics = dict(self.method.diagnostics(model, run.ctx))
            if run.data.labels.assigned_ever:
                diagnostics.update(run.data.labels.diagnostics())
        self.pending.append((self.step, point, means, collected, diagnostics))

    def read_evaluations(self) -> None:
        """Turn queued evaluations into curve points (metrics computed now), for runs still
        training at that step; keeps the latest mean loss and main error for progress."""
        for step, point, means, collected, diagnostics in self.pending:
            means = {name: value.tolist() for name, value in means.items()}
            means.setdefault("loss", [float("nan")] * self.k)  # steps = 0: evaluated untrained
            values = [self._metric_values(collected, i) for i in range(self.k)]
            extra = {name: float(v) for name, v in diagnostics.items()}
            for i, run in enumerate(self.runs):
                if run.status == "diverged" and run.steps_done <= step:
                    continue
                terms = {name: v[i] for name, v in means.items() if name != "loss"}
                metrics = {**values[i], **extra}
                run.curves.append(dict(point, loss=means["loss"][i], loss_terms=terms,
                                       **{k: metrics.pop(k) for k in CURVE_COLUMNS if k in metrics},
                                       metrics=metrics))
            finite = [v for v in means["loss"] if math.isfinite(v)]
            self.shown_loss = sum(finite) / len(finite) if finite else float("nan")
            main = f"{self.eval_sets[0].spec.name}_{self.eval_sets[0].metrics[0]}"
            self.shown_error = values[0].get(main, float("nan"))
        self.pending.clear()

    def _metric_values(self, collected: dict, i: int) -> dict[str, float]:
        """Every metric of every evaluation set for run ``i`` of the pack."""
        def one(name: str) -> Collected:
            predictions, embeddings, labels = collected[name]
            return Collected(labels if labels.dim() == 1 else labels[i], predictions[i],
                             None if embeddings is None else embeddings[i])
        out = {}
        for s in self.eval_sets:
            c = one(s.spec.name)
            if s.spec.other:
                c.other = one(s.spec.other)
            for name in s.metrics:
                base, k = parse_metric_name(name)
                metric = self.registry.metric(name)
                value = metric.compute(c) if k is None else metric.compute(c, k)
                out[f"{s.spec.name}_{name}"] = float(value)
        return out

    def finish(self) -> None:
        self.read_evaluations()
        for i, run in enumerate(self.runs):
            if run.status == "running":
                run.status, run.steps_done = "ok", self.config["steps"]
                run.model = self.nets.trained_model(i)

    def columns(self) -> dict[str, tuple[str, str, bool]]:
        """Each evaluated value: column -> (set, metric, higher is better), for the summaries."""
        return {f"{s.spec.name}_{name}": (s.spec.name, name, self.registry.metric(name).higher_is_better)
                for s in self.eval_sets for name in s.metrics}


def _split(domain, spec: EvalSpec, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """An evaluation set's uint8 images and labels on the device."""
    if spec.split == "test":
        x, y = domain.test_x, domain.test_y
    elif spec.split == "train":
        x, y = domain.train_x, domain.train_y
    else:  # "validation" (EvalSpec checks the split)
        idx = torch.as_tensor(plan.subsets.validation, device=domain.train_x.device)
        x, y = domain.train_x[idx], domain.train_y[idx]
    if spec.indices is not None:
        idx = torch.as_tensor(spec.indices, device=x.device)
        x, y = x[idx], y[idx]
    return x, y


# --------------------------------------------------------------------------- the loop
def _train(configs: list[dict], registry, data: dict[str, ImageDataset], device: torch.device, on_step,
           options: EngineOptions, packed: bool) -> list[RunOutcome]:
    started = time.perf_counter()
    pack = _Pack(configs, registry, device, options, packed)
    columns: dict[str, tuple[str, str, bool]] = {}
    try:
        pack.build(data)
        columns = pack.columns()
        steps, eval_every = pack.config["steps"], pack.config["eval_every"]
        for step in range(steps):
            pack.start_step(step)
            tensors = pack.draw_batches()
            terms = pack.nets.loss_terms(tensors)
            loss = pack.update(terms)
            pack.bookkeeping(loss, terms)
            last = step + 1 == steps
            evaluate = (step + 1) % eval_every == 0 or last
            if evaluate or (step + 1) % options.check_every == 0:
                if not pack.check():
                    break
            if evaluate:
                pack.evaluate()
            if on_step:
                on_step(step + 1, pack.shown_loss, pack.shown_error)
        if steps == 0:  # the network as initialised (random-network and k-means-on-pixels baselines)
            pack.evaluate()
        pack.finish()
    except Exception as exc:  # a failing run is recorded; the grid goes on
        if packed or RAISE_RUN_ERRORS:
            raise
        run = pack.runs[0]
        run.status, run.error, run.steps_done = "failed", f"{type(exc).__name__}: {exc}", pack.step
        run.traceback = traceback.format_exc()
    wall = time.perf_counter() - started
    outcomes = []
    for run in pack.runs:
        metrics = summarise(run.curves, run.config.get("last_k", 5), columns)
        if run.curves:  # the method's diagnostics at the last evaluation (labels_assigned, ...) as columns
            metrics.update({k: v for k, v in run.curves[-1].get("metrics", {}).items() if k not in metrics})
        if run.status == "diverged":
            for key in {**DEFAULT_COLUMNS, **columns}:
                if not key.startswith("val_"):
                    metrics[key] = float("nan")  # the final model is not a result
        outcomes.append(RunOutcome(run.status, run.error, metrics, run.curves,
                                   run.plan.subsets if run.plan is not None else None, run.steps_done, wall,
                                   run.model, pack_size=len(pack.runs), traceback=run.traceback))
    return outcomes
