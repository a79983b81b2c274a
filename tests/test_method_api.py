"""The method API: lifecycle hooks in order, schedule state owned by the method, an EMA
teacher evaluated through eval_model, without touching the training loop."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl, hyperparameter
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits

EVENTS: list[tuple] = []


class Scheduled(Method):
    """Records its lifecycle; ramps a consistency weight; keeps an EMA teacher."""

    name = "scheduled"
    ramp_steps: int = hyperparameter(4, ge=1)
    ema: float = hyperparameter(0.5, gt=0, le=1)

    def on_train_start(self, model, ctx):
        EVENTS.append(("start", ctx.step, ctx.steps))
        self.teacher = copy.deepcopy(model)

    def on_step_start(self, model, ctx):
        EVENTS.append(("step_start", ctx.step))

    def loss_terms(self, batch, model, ctx):
        weight = min(1.0, ctx.step / self.ramp_steps)
        EVENTS.append(("loss", ctx.step, weight, batch.x_unlabeled is None))
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}

    def on_step_end(self, model, ctx):
        EVENTS.append(("step_end", ctx.step))
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), model.parameters()):
                t.mul_(1 - self.ema).add_(self.ema * s)

    def eval_model(self, model):
        EVENTS.append(("eval_model",))
        return self.teacher


class Plugin:
    @staticmethod
    @hookimpl
    def ssl_bench_methods():
        return [Scheduled]


GRID = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "scheduled"
steps = 6
eval_every = 3
labeled_per_class = 2
n_labeled = 20
n_unlabeled = 50
unlabeled_batch = 10
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra_plugins=[("test-scheduled", Plugin())])


def resolved(registry, text=GRID):
    return expand(parse_grid(__import__("tomllib").loads(text)), registry)[0].config


def test_hooks_run_in_documented_order_with_step_counts(registry):
    EVENTS.clear()
    outcome = train_run(resolved(registry), registry, load_digits(None), torch.device("cpu"))
    assert outcome.status == "ok", outcome.error
    assert EVENTS[0] == ("start", 0, 6)
    per_step = [e for e in EVENTS[1:] if e[0] in ("step_start", "loss", "step_end")]
    expected = []
    for step in range(6):
        w = min(1.0, step / 4)
        expected += [("step_start", step), ("loss", step, w, False), ("step_end", step)]
    assert per_step == expected
    # evaluation after steps 3 and 6 goes through eval_model, and so does the network the run keeps
    assert EVENTS.count(("eval_model",)) == 3
    assert outcome.model is not None
    assert [c["step"] for c in outcome.curves] == [3, 6]


class ConstantTeacher(Scheduled):
    """Evaluates a network that always predicts class 3 instead of the trained one."""

    name = "constant_teacher"

    def eval_model(self, model):
        teacher = copy.deepcopy(model)
        with torch.no_grad():
            teacher.head.weight.zero_()
            teacher.head.bias.copy_(F.one_hot(torch.tensor(3), 10).float())
        return teacher


def test_eval_model_is_what_gets_evaluated():
    class Both:
        @staticmethod
        @hookimpl
        def ssl_bench_methods():
            return [ConstantTeacher]

    reg = load_registry(extra_plugins=[("test-constant", Both())])
    dataset = load_digits(None)
    config = resolved(reg, GRID.replace('"scheduled"', '"constant_teacher"'))
    outcome = train_run(config, reg, dataset, torch.device("cpu"))
    assert outcome.status == "ok"
    share_of_3 = (dataset.test_y == 3).float().mean().item()
    assert outcome.metrics["test_error"] == pytest.approx(100 * (1 - share_of_3))


def test_method_hyperparameters_are_validated(registry):
    with pytest.raises(UserError, match=r"methods\.scheduled\.ema must be <= 1"):
        resolved(registry, GRID + "[base.methods.scheduled]\nema = 2.0\n")
    with pytest.raises(UserError, match=r"unknown key methods\.scheduled\.ramp_step .*did you mean 'ramp_steps'"):
        resolved(registry, GRID + "[base.methods.scheduled]\nramp_step = 2\n")


def test_unlabeled_batches_are_skipped_for_supervised(registry):
    EVENTS.clear()
    config = resolved(registry, GRID.replace('method = "scheduled"', 'method = "supervised"'))
    outcome = train_run(config, registry, load_digits(None), torch.device("cpu"))
    assert outcome.status == "ok"
    assert outcome.subsets is not None and len(outcome.subsets.unlabeled) == 50
    assert set(outcome.curves[0]) >= {"step", "lr", "loss", "loss_terms", "test_error"}
    assert set(outcome.curves[0]["loss_terms"]) == {"classification"}


class BadTerms(Method):
    """Returns whatever ``RETURN`` says as its loss terms."""

    name = "bad_terms"
    RETURN = staticmethod(lambda logits: {})

    def loss_terms(self, batch, model, ctx):
        logits = model(batch.x_labeled)
        return BadTerms.RETURN(F.cross_entropy(logits, batch.y_labeled, reduction="none"))


@pytest.mark.parametrize("returned, message", [
    (lambda ce: {"ce": ce}, r"methods\.bad_terms returned term 'ce' of shape \[20\]; loss terms must be scalars"),
    (lambda ce: {"ce": ce.mean().item()}, r"methods\.bad_terms returned term 'ce' as float; loss terms must be scalar"),
    (lambda ce: {"n": (ce > 0).sum()}, r"returned term 'n' of dtype torch\.int64; loss terms must be floating-point"),
    (lambda ce: [ce.mean()], r"methods\.bad_terms\.loss_terms returned list; it must return a dict"),
])
def test_loss_terms_that_are_not_scalar_tensors_fail_at_the_first_step(returned, message):
    class Plugin:
        @staticmethod
        @hookimpl
        def ssl_bench_methods():
            return [BadTerms]

    BadTerms.RETURN = staticmethod(returned)
    reg = load_registry(extra_plugins=[("test-bad-terms", Plugin())])
    config = resolved(reg, GRID.replace('"scheduled"', '"bad_terms"').replace("n_unlabeled = 50", "n_unlabeled = 0"))
    outcome = train_run(config, reg, load_digits(None), torch.device("cpu"))
    assert outcome.status == "failed" and outcome.steps_done == 0
    assert __import__("re").search(message, outcome.error), outcome.error


def test_a_hyperparameter_without_annotation_is_a_broken_plugin_naming_the_attribute():
    class Unannotated(Method):
        name = "unannotated"
        weight = hyperparameter(1.0, ge=0)

        def loss_terms(self, batch, model, ctx):
            return {}

    class Plugin:
        @staticmethod
        @hookimpl
        def ssl_bench_methods():
            return [Unannotated]

    reg = load_registry(extra_plugins=[("test-unannotated", Plugin())])
    assert "unannotated" not in reg.names("methods")
    with pytest.raises(UserError, match=r"Unannotated\.weight = hyperparameter\(\.\.\.\) has no type annotation.*"
                                        r"`weight: float = hyperparameter\(\.\.\.\)`"):
        reg.method("unannotated")
