"""Training runs: the loop every method shares, for one run or for a pack of runs.

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
import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .backbone import Classifier, l2_penalty
from .data import DeviceData, ImageDataset, Subsets, draw_subsets
from .errors import UserError
from .grid import plugin_args
from .method import Batch, Method, TrainContext

EVAL_BATCH = 1000
#: settings that may differ between the runs of one pack: they change only which samples a run sees
PACKABLE_KEYS = ("seed", "n_labeled", "n_unlabeled", "unlabeled_overlap")
#: lifecycle hooks a packable method must not override (they act on one module)
HOOKS = ("on_train_start", "on_step_start", "on_step_end", "eval_model")


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


def build_model(config: dict, registry, dataset: ImageDataset) -> Classifier:
    spec, variant = registry.backbone(config["backbone"])
    kwargs = plugin_args(config, "backbone")
    if variant is not None:
        kwargs["variant"] = variant
    backbone = spec.build(dataset.input_shape, **kwargs)
    return Classifier(backbone, dataset.num_classes)


def build_method(config: dict, registry) -> Method:
    return registry.method(config["method"])(**plugin_args(config, "method"))


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


def summarise(curves: list[dict], last_k: int) -> dict[str, float]:
    """The run's metrics from its evaluation curve (see ssl_bench.protocol.METRICS)."""
    nan = float("nan")
    if not curves:
        return {k: nan for k in ("test_error", "test_error_min", "test_error_last_k", "test_error_best_val", "val_error")}
    test = np.array([c["test_error"] for c in curves])
    val = np.array([c.get("val_error", nan) for c in curves])
    has_val = not np.all(np.isnan(val))
    return {
        "test_error": float(test[-1]),
        "test_error_min": float(test.min()),
        "test_error_last_k": float(np.median(test[-last_k:])),
        "test_error_best_val": float(test[int(np.nanargmin(val))]) if has_val else nan,
        "val_error": float(val[-1]) if has_val else nan,
    }


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    if isinstance(params, nn.Module):
        params = params.parameters()
    if config["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=config["lr"])
    return torch.optim.SGD(params, lr=config["lr"], momentum=0.9)


# --------------------------------------------------------------------------- the objective
class Objective(nn.Module):
    """One run's objective as a module: ``forward(x_l, y_l, x_u)`` returns the method's loss
    terms (plus the protocol's L2 term), ``scores(x)`` the method's class scores. As a module
    it can be compiled, and its parameters swapped for a packed run's (functional_call)."""

    def __init__(self, model: Classifier, method: Method, ctx: TrainContext, weight_decay: float):
        super().__init__()
        self.model = model
        self.method = method
        self.ctx = ctx
        self.weight_decay = weight_decay

    def forward(self, x_l, y_l, x_u, *, scores_only: bool = False):
        if scores_only:
            return self.method.predict(self.model, x_l)
        terms = self.method.loss_terms(Batch(x_l, y_l, x_u), self.model, self.ctx)
        if self.weight_decay:
            terms["l2"] = self.weight_decay * l2_penalty(self.model)
        return terms


class _PerRunOnly:
    """Stands in for ``ctx.data`` in a pack, where it is not one run's."""

    def __init__(self, what: str):
        self.what = what

    def __getattr__(self, name):
        raise RuntimeError(f"ctx.{self.what} is per run and not available to a packed loss; "
                           f"the runs are trained one by one instead")


class _Networks:
    """The K networks of a pack behind one interface; K = 1 is a plain module (no torch.func)."""

    def __init__(self, models: list[Classifier], method: Method, ctxs: list[TrainContext], config: dict,
                 options: EngineOptions, device: torch.device):
        self.models, self.method, self.k = models, method, len(models)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if options.bf16
                         else contextlib.nullcontext())
        if self.k == 1:
            if options.channels_last:
                models[0].to(memory_format=torch.channels_last)
            self.objective = Objective(models[0], method, ctxs[0], config["weight_decay"])
            self.params = list(models[0].parameters())
            fn = self.objective
        else:
            # no per-run data or generator inside vmap; random ops there fail (randomness="error")
            ctx = dataclasses.replace(ctxs[0], data=_PerRunOnly("data"), generator=None)
            self.objective = Objective(models[0], method, ctx, config["weight_decay"])
            params, buffers = torch.func.stack_module_state(models)
            self.stacked = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
            self.params = list(params.values())
            fn = self._vmapped
        if options.compile or options.cuda_graphs:
            fn = torch.compile(fn, mode="reduce-overhead" if options.cuda_graphs else None)
        self.fn = fn

    def _vmapped(self, x_l, y_l, x_u, scores_only=False):
        def one(state, x_l, y_l, x_u):
            return torch.func.functional_call(self.objective, state, (x_l, y_l, x_u), {"scores_only": scores_only})

        dims = (0, 0 if x_l.dim() == 5 else None, None if y_l is None else 0, None if x_u is None else 0)
        return torch.vmap(one, in_dims=dims)(self.stacked, x_l, y_l, x_u)

    def loss_terms(self, x_l, y_l, x_u) -> dict[str, torch.Tensor]:
        """Each term as a K-vector (one entry per run)."""
        with self.autocast:
            terms = self.fn(x_l, y_l, x_u)
        return {name: value.float().reshape(self.k) for name, value in terms.items()}

    @torch.no_grad()
    def wrong(self, x: torch.Tensor, y: torch.Tensor, normalise) -> torch.Tensor:
        """Misclassified counts per run (a K-vector on the device, not read here). ``x`` is shared
        by all runs (N x C x H x W uint8) or per run (K x N x C x H x W)."""
        nets = [self.method.eval_model(m) for m in self.models] if self.k == 1 else [self.objective]
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        wrong = torch.zeros(self.k, dtype=torch.int64, device=y.device)
        chunk = max(EVAL_BATCH // self.k, 50)
        shared = x.dim() == 4
        for start in range(0, x.shape[0 if shared else 1], chunk):
            part = x[start:start + chunk] if shared else x[:, start:start + chunk]
            labels = y[start:start + chunk] if shared else y[:, start:start + chunk]
            inputs = normalise(part) if shared else torch.stack([normalise(p) for p in part])
            with self.autocast:
                if self.k == 1:
                    scores = self.method.predict(nets[0], inputs if shared else inputs[0])[None]
                else:
                    scores = self._vmapped(inputs, None, None, scores_only=True)
            wrong += (scores.argmax(-1) != labels).sum(-1)
        for n, mode in zip(nets, modes):
            n.train(mode)
        return wrong

    def trained_model(self, k: int) -> nn.Module:
        """Run ``k``'s network as a module (its evaluation network)."""
        model = self.models[k]
        if self.k > 1:
            with torch.no_grad():
                for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                    tensor.copy_(self.stacked[f"model.{name}"][k])
        return self.method.eval_model(model)


# --------------------------------------------------------------------------- the loop
def train_run(config: dict, registry, dataset: ImageDataset, device: torch.device,
              on_step: Callable[[int, float, float], None] | None = None,
              options: EngineOptions = EngineOptions()) -> RunOutcome:
    """Train and evaluate one run. Divergence and exceptions are outcomes, not crashes."""
    return train_pack([config], registry, dataset, device, on_step, options)[0]


def train_pack(configs: Sequence[dict], registry, dataset: ImageDataset, device: torch.device,
               on_step: Callable[[int, float, float], None] | None = None,
               options: EngineOptions = EngineOptions(), log: Callable[[str], None] | None = None) -> list[RunOutcome]:
    """Train runs of equal :func:`pack_key` together (one run: the plain loop). If the pack cannot
    be trained packed (a method with hooks, randomness inside the loss, an operation vmap does
    not support) its runs are trained one by one, so the outcome never depends on packing."""
    if len(configs) > 1:
        keys = {pack_key(c) for c in configs}
        if len(keys) > 1:
            raise ValueError("train_pack: the runs differ in more than seed and data subsets (see pack_key)")
        if packable(registry.method(configs[0]["method"])):
            try:
                return _train(list(configs), registry, dataset, device, on_step, options, packed=True)
            except Exception as exc:  # packing is an optimisation: fall back to solo runs
                if log:
                    reason = (str(exc).strip().splitlines() or [""])[0][:200]
                    log(f"note: {len(configs)} runs could not train packed ({type(exc).__name__}: {reason}); "
                        f"training them one by one")
    return [_train([c], registry, dataset, device, on_step, options, packed=False)[0] for c in configs]


@dataclasses.dataclass
class _RunState:
    config: dict
    subsets: Subsets | None = None
    data: DeviceData | None = None
    ctx: TrainContext | None = None
    curves: list[dict] = dataclasses.field(default_factory=list)
    status: str = "running"
    error: str | None = None
    steps_done: int = 0
    model: nn.Module | None = None


def _train(configs: list[dict], registry, dataset: ImageDataset, device: torch.device, on_step, options: EngineOptions,
           packed: bool) -> list[RunOutcome]:
    started = time.perf_counter()
    runs = [_RunState(c) for c in configs]
    config = configs[0]  # everything but the subsets is shared by a pack
    step = 0
    try:
        models = []
        memory_format = torch.channels_last if options.channels_last and not packed else torch.contiguous_format
        for run in runs:
            seed = run.config["seed"]
            run.subsets = draw_subsets(dataset.train_y.numpy(), dataset.num_classes, seed=seed,
                                       n_labeled=run.config["n_labeled"], n_unlabeled=run.config["n_unlabeled"],
                                       overlap=run.config["unlabeled_overlap"], n_validation=run.config["n_validation"],
                                       unlabeled_pool=dataset.unlabeled_pool)
            torch.manual_seed(seed)
            models.append(build_model(run.config, registry, dataset).to(device))
            run.data = DeviceData(dataset, run.subsets, device, seed, augment=config["augment"],
                                  memory_format=memory_format)
            run.ctx = TrainContext(step=0, steps=config["steps"], num_classes=dataset.num_classes,
                                   device=device, data=run.data, generator=run.data.generator)
        method = build_method(config, registry)
        nets = _Networks(models, method, [r.ctx for r in runs], config, options, device)
        optimizer = make_optimizer(nets.params, config)
        scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, config["lr_decay_every"], config["lr_decay_factor"])
                     if config["lr_decay_every"] else None)
        want_unlabeled = method.uses_unlabeled and config["unlabeled_batch"] > 0
        k, steps = len(runs), config["steps"]
        running: dict[str, torch.Tensor] = {}
        n_running = 0
        pending: list[tuple[int, dict, dict[str, torch.Tensor]]] = []  # evaluations not yet read
        first_bad = torch.full((k,), -1, dtype=torch.int64, device=device)
        at_bad: dict[str, torch.Tensor] = {}  # the loss and its terms at each run's first bad step
        shown_loss = shown_error = float("nan")

        for model in models:
            model.train()
        if not packed:
            method.on_train_start(models[0], runs[0].ctx)
        for step in range(steps):
            if not packed:
                runs[0].ctx.step = step
                method.on_step_start(models[0], runs[0].ctx)
            else:
                nets.objective.ctx.step = step
            x_l, y_l, x_u = _batches(runs, config, want_unlabeled, packed)
            terms = nets.loss_terms(x_l, y_l, x_u)
            loss = torch.stack(list(terms.values())).sum(0)  # one loss per run
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # runs are independent: each gets its own gradient
            optimizer.step()
            if scheduler:
                scheduler.step()
            if not packed:
                method.on_step_end(models[0], runs[0].ctx)

            with torch.no_grad():  # bookkeeping on the device, no host sync
                newly_bad = ~torch.isfinite(loss) & (first_bad < 0)
                first_bad = torch.where(newly_bad, step, first_bad)
                for name, value in (("loss", loss), *terms.items()):
                    value = value.detach().double()
                    running[name] = running[name] + value if name in running else value
                    at_bad[name] = torch.where(newly_bad, value, at_bad[name] if name in at_bad else value)
            n_running += 1

            last = step + 1 == steps
            evaluate = (step + 1) % config["eval_every"] == 0 or last
            if evaluate or (step + 1) % options.check_every == 0:
                # One host read: which runs diverged (and every queued evaluation, now finished).
                for i, bad_step in enumerate(first_bad.tolist()):
                    if bad_step >= 0 and runs[i].status == "running":
                        runs[i].status, runs[i].steps_done = "diverged", bad_step
                        values = {name: value[i].item() for name, value in at_bad.items()}
                        shown = ", ".join(f"{n}={v:.4g}" for n, v in values.items() if n != "loss")
                        runs[i].error = f"loss is {values['loss']} at step {bad_step} (terms: {shown})"
                shown_loss, shown_error = _read_evaluations(pending, runs, shown_loss, shown_error)
                if all(r.status != "running" for r in runs):
                    break
            if evaluate:
                means = {name: total / n_running for name, total in running.items()}
                running = {}
                point = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"]}
                errors = {}
                for split, x, y, normalise in _eval_sets(runs, packed):
                    key = "test_error" if split == "test" else "val_error"
                    errors[key] = (nets.wrong(x, y, normalise), y.shape[-1])
                pending.append((step, point, means, errors))
                n_running = 0
            if on_step:
                on_step(step + 1, shown_loss, shown_error)
        _read_evaluations(pending, runs, shown_loss, shown_error)
        for i, run in enumerate(runs):
            if run.status == "running":
                run.status, run.steps_done = "ok", steps
                run.model = nets.trained_model(i)
    except Exception as exc:  # a failing run is recorded; the grid goes on
        if packed:
            raise
        run = runs[0]
        run.status, run.error, run.steps_done = "failed", f"{type(exc).__name__}: {exc}", step
    wall = time.perf_counter() - started
    outcomes = []
    for run in runs:
        metrics = summarise(run.curves, run.config.get("last_k", 5))
        if run.status == "diverged":
            metrics["test_error"] = float("nan")  # the final model is not a result
        outcomes.append(RunOutcome(run.status, run.error, metrics, run.curves, run.subsets, run.steps_done, wall,
                                   run.model, pack_size=len(runs)))
    return outcomes


def _batches(runs: list[_RunState], config: dict, want_unlabeled: bool, packed: bool):
    """This step's batches: one run's, or every run's stacked (K x ...), each from its own generator."""
    drawn = []
    for run in runs:
        x_l, y_l = run.data.labeled_batch(config["labeled_per_class"])
        x_u = run.data.unlabeled_batch(config["unlabeled_batch"]) if want_unlabeled else None
        drawn.append((x_l, y_l, x_u))
    if not packed:
        return drawn[0]
    x_l, y_l, x_u = zip(*drawn)
    return torch.stack(x_l), torch.stack(y_l), None if x_u[0] is None else torch.stack(x_u)


def _eval_sets(runs: list[_RunState], packed: bool):
    """(split, images, labels, normalise): the shared test set, and each run's validation set."""
    data = runs[0].data
    yield "test", data.test_x, data.test_y, data.normalise
    if len(data.validation):
        if not packed:
            yield "validation", data.train_x[data.validation], data.train_y[data.validation], data.normalise
        else:
            x = torch.stack([r.data.train_x[r.data.validation] for r in runs])
            y = torch.stack([r.data.train_y[r.data.validation] for r in runs])
            yield "validation", x, y, data.normalise


def _read_evaluations(pending: list, runs: list[_RunState], shown_loss: float, shown_error: float):
    """Turn queued evaluations into curve points (one host read each), for runs still training
    at that step; returns the latest mean loss and test error for progress display."""
    for step, point, means, errors in pending:
        means = {name: value.tolist() for name, value in means.items()}
        errors = {key: [100.0 * w / max(n, 1) for w in wrong.tolist()] for key, (wrong, n) in errors.items()}
        for i, run in enumerate(runs):
            if run.status == "diverged" and run.steps_done <= step:
                continue
            terms = {name: values[i] for name, values in means.items() if name != "loss"}
            run.curves.append(dict(point, loss=means["loss"][i], loss_terms=terms,
                                   **{key: values[i] for key, values in errors.items()}))
        finite = [value for value in means["loss"] if math.isfinite(value)]
        shown_loss = sum(finite) / len(finite) if finite else float("nan")
        shown_error = errors["test_error"][0]
    pending.clear()
    return shown_loss, shown_error
