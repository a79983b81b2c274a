"""Training one run: the loop every method shares.

The loop is plain and the same for all methods; a method contributes loss terms and, if it
needs them, lifecycle hooks (see ssl_bench.method). Everything random derives from the run
seed: the subsets (numpy streams), the network initialisation (torch's global generator,
seeded right before the network is built) and the batches (a generator on the device).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch

from .backbone import Classifier, l2_penalty
from .data import DeviceData, ImageDataset, Subsets, draw_subsets
from .grid import plugin_args
from .method import Batch, Method, TrainContext

EVAL_BATCH = 1000


class Diverged(Exception):
    """The loss became NaN or infinite."""


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


def build_model(config: dict, registry, dataset: ImageDataset) -> Classifier:
    spec, variant = registry.backbone(config["backbone"])
    kwargs = plugin_args(config, "backbone")
    if variant is not None:
        kwargs["variant"] = variant
    backbone = spec.build(dataset.input_shape, **kwargs)
    return Classifier(backbone, dataset.num_classes)


def build_method(config: dict, registry) -> Method:
    return registry.method(config["method"])(**plugin_args(config, "method"))


@torch.no_grad()
def error_rate(method: Method, model: torch.nn.Module, data: DeviceData, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification error in percent over uint8 images ``x`` with labels ``y``."""
    net = method.eval_model(model)
    was_training = net.training
    net.eval()
    wrong = 0
    for start in range(0, len(x), EVAL_BATCH):
        scores = method.predict(net, data.normalise(x[start:start + EVAL_BATCH]))
        wrong += (scores.argmax(1) != y[start:start + EVAL_BATCH]).sum().item()
    net.train(was_training)
    return 100.0 * wrong / max(len(x), 1)


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


def train_run(config: dict, registry, dataset: ImageDataset, device: torch.device,
              on_step: Callable[[int, float, float], None] | None = None) -> RunOutcome:
    """Train and evaluate one run. Divergence and exceptions are outcomes, not crashes."""
    started = time.perf_counter()
    curves: list[dict] = []
    subsets = trained = None
    step = 0
    try:
        seed = config["seed"]
        subsets = draw_subsets(dataset.train_y.numpy(), dataset.num_classes, seed=seed,
                               n_labeled=config["n_labeled"], n_unlabeled=config["n_unlabeled"],
                               overlap=config["unlabeled_overlap"], n_validation=config["n_validation"],
                               unlabeled_pool=dataset.unlabeled_pool)
        torch.manual_seed(seed)
        model = build_model(config, registry, dataset).to(device)
        method = build_method(config, registry)
        data = DeviceData(dataset, subsets, device, seed, augment=config["augment"])
        ctx = TrainContext(step=0, steps=config["steps"], num_classes=dataset.num_classes,
                           device=device, data=data, generator=data.generator)
        optimizer = make_optimizer(model, config)
        scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, config["lr_decay_every"], config["lr_decay_factor"])
                     if config["lr_decay_every"] else None)
        want_unlabeled = method.uses_unlabeled and config["unlabeled_batch"] > 0
        running: dict[str, float] = {}
        n_running = 0
        current_error = float("nan")

        model.train()
        method.on_train_start(model, ctx)
        for step in range(config["steps"]):
            ctx.step = step
            method.on_step_start(model, ctx)
            x_l, y_l = data.labeled_batch(config["labeled_per_class"])
            x_u = data.unlabeled_batch(config["unlabeled_batch"]) if want_unlabeled else None
            terms = method.loss_terms(Batch(x_l, y_l, x_u), model, ctx)
            if config["weight_decay"]:
                terms["l2"] = config["weight_decay"] * l2_penalty(model)
            loss = torch.stack(list(terms.values())).sum()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise Diverged(f"loss is {loss_value} at step {step} "
                               f"(terms: {', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler:
                scheduler.step()
            method.on_step_end(model, ctx)

            running["loss"] = running.get("loss", 0.0) + loss_value
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value.item()
            n_running += 1
            if (step + 1) % config["eval_every"] == 0 or step + 1 == config["steps"]:
                point = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"], "loss": running.pop("loss") / n_running,
                         "loss_terms": {k: v / n_running for k, v in running.items()}}
                for split, (x, y) in data.eval_sets().items():
                    key = "test_error" if split == "test" else "val_error"
                    point[key] = error_rate(method, model, data, x, y)
                curves.append(point)
                current_error = point["test_error"]
                running, n_running = {}, 0
            if on_step:
                on_step(step + 1, loss_value, current_error)
        status, error = "ok", None
        trained = method.eval_model(model)
        steps_done = config["steps"]
    except Diverged as exc:
        status, error, steps_done = "diverged", str(exc), step
    except Exception as exc:  # a failing run is recorded; the grid goes on
        status, error, steps_done = "failed", f"{type(exc).__name__}: {exc}", step
    metrics = summarise(curves, config.get("last_k", 5))
    if status == "diverged":
        metrics["test_error"] = float("nan")  # the final model is not a result
    return RunOutcome(status, error, metrics, curves, subsets, steps_done, time.perf_counter() - started, trained)


def make_optimizer(model: torch.nn.Module, config: dict) -> torch.optim.Optimizer:
    if config["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=config["lr"])
    return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
