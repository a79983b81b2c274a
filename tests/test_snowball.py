"""Snowball (seed 003, ch. 2): confident sample discovery on a hand-made feature set, the labeled
set's growth and reset across iterations and generations, no true label read, the teacher's
early/late EMA decay and the master's EMA of the teacher."""
from __future__ import annotations

import copy
import textwrap
import tomllib
import types

import pytest
import torch
from torch import nn

from ssl_bench import UserError
from ssl_bench.backbone import Classifier
from ssl_bench.data import RunLabels
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.method import TrainContext
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.snowball import (Snowball, SnowballMixMatch, class_centres, nearest_centre,
                                                select)

CPU = torch.device("cpu")


# ------------------------------------------------------------------ discovery on known features
def test_class_centres_nearest_centre_and_the_selections():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    centres = class_centres(features, torch.tensor([0, 0, 1, 1]), 3)
    assert torch.equal(centres[:2], torch.tensor([[1.0, 0.0], [11.0, 10.0]]))
    assert torch.isnan(centres[2]).all()  # no sample of class 2: never the nearest
    points = torch.tensor([[1.0, 1.0], [11.0, 13.0], [1.0, 4.0], [11.0, 12.0], [5.0, 0.0], [8.0, 10.0]])
    label, d = nearest_centre(points, centres)
    assert label.tolist() == [0, 1, 0, 1, 0, 1]
    assert d.tolist() == pytest.approx([1.0, 3.0, 4.0, 2.0, 4.0, 3.0])
    distance = torch.tensor([1.0, 3.0, 4.5, 2.0, 4.0, 3.5])
    assert sorted(select(distance, 2, "nearest").tolist()) == [0, 3]
    assert sorted(select(distance, 2, "farthest").tolist()) == [2, 4]
    # the farthest 1 of the 2 x 1 nearest, then of the 4 nearest
    assert select(distance, 1, "farthest_of_nearest", pool_factor=2).tolist() == [3]
    assert select(distance, 1, "farthest_of_nearest", pool_factor=4).tolist() == [5]
    g = torch.Generator().manual_seed(0)
    chosen = select(distance, 3, "random", generator=g)
    assert len(set(chosen.tolist())) == 3
    assert select(distance, 10, "nearest").tolist() == [0, 3, 1, 5, 4, 2]  # N capped at the candidates


class Points(nn.Module):
    """The image's two pixel values ARE its embedding: a hand-made feature set."""

    embedding_dim = 2

    def forward(self, x):
        return x.flatten(1)


def point_ctx(truth=None):
    # labeled: image 0 (class 0) at (0, 0), image 1 (class 1) at (100, 100); unlabeled 2-7
    xy = [(0, 0), (100, 100), (3, 4), (90, 100), (50, 40), (1, 1), (100, 99), (60, 70)]
    train_x = torch.tensor(xy, dtype=torch.uint8).reshape(8, 1, 1, 2)
    initial = torch.tensor([0, 1] + [-1] * 6)
    data = types.SimpleNamespace(train_x=train_x, unlabeled_x=train_x, unlabeled=torch.arange(8),
                                 normalise=lambda x: x.float())
    labels = RunLabels(initial, truth)
    model = Classifier(Points(), 2)
    ctx = TrainContext(step=0, steps=10, num_classes=2, device=CPU, data=data,
                       generator=torch.Generator().manual_seed(0), labels=labels, ema_model=copy.deepcopy(model))
    return model, ctx


def test_discovery_labels_exactly_the_n_nearest_without_reading_the_true_labels():
    model, ctx = point_ctx(truth=None)  # no truth at all: discovery must not need it
    method = Snowball(discovery_model="student")
    method.discover(model, ctx)
    # N = 2 (the labeled count): image 6 (100, 99) at distance 1 and image 5 (1, 1) at 1.41
    assert ctx.labels.current.tolist() == [0, 1, -1, -1, -1, 0, 1, -1]
    assert method.discovered == 2


def test_discovery_grows_by_the_labeled_count_and_caps_at_the_candidates():
    model, ctx = point_ctx()
    method = Snowball(discovery_model="student")
    method.discover(model, ctx)
    assert method.discovered == 2 and len(ctx.labels.labeled()) == 4
    method.discover(model, ctx)  # N = 4 = all the 4 left
    assert method.discovered == 4 and len(ctx.labels.labeled()) == 8
    # the new centres (0.5, 0.5) and (100, 99.5): image 4 (50, 40) at 63.3 vs 77.7, image 7 (60, 70) at 92.2 vs 49.7
    assert ctx.labels.current.tolist() == [0, 1, 0, 1, 0, 0, 1, 1]
    method.discover(model, ctx)
    assert method.discovered == 0


def test_the_oracle_variant_takes_the_true_labels_of_the_same_samples():
    truth = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1])
    model, ctx = point_ctx(truth)
    Snowball(discovery_model="student", discovered_labels="true").discover(model, ctx)
    assert ctx.labels.current.tolist() == [0, 1, -1, -1, -1, 1, 1, -1]  # images 5 and 6, their true classes
    assert ctx.labels.diagnostics()["labels_assigned_accuracy"].item() == 100.0


def test_the_master_is_an_ema_of_the_teacher():
    model, ctx = point_ctx()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))  # float and integer state
    teacher(torch.randn(4, 2))
    method = Snowball(master_decay=0.9)
    method.master = copy.deepcopy(teacher)
    before = {k: v.clone() for k, v in method.master.state_dict().items()}
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    teacher(torch.randn(4, 2))  # num_batches_tracked 1 -> 2: copied, not averaged
    method.update_master(teacher)
    for name, value in method.master.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * teacher.state_dict()[name]), name
        else:
            assert torch.equal(value, teacher.state_dict()[name]) and value.item() == 2, name


def test_snowball_mixmatch_discovers_by_the_farthest_of_the_nearest():
    assert SnowballMixMatch().selection == "farthest_of_nearest" and Snowball().selection == "nearest"
    assert SnowballMixMatch().pool_factor == 10


# ------------------------------------------------------------------ the schedule in a real run
GRID = """
name = "snowball_test"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "snowball"
n_labeled = 20
n_unlabeled = "all"
labeled_per_class = 2
unlabeled_batch = 20
steps = 10
eval_every = 1
last_k = 1
ema_decay = 0.99
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[base.methods.snowball]
warmup = 2
iteration_steps = 2
iterations = 2
generations = 2
ramp_up = 0
[axes]
seed = [0]
"""


def configs(text: str = GRID, **changes) -> list[dict]:
    doc = tomllib.loads(textwrap.dedent(text))
    doc["base"].update(changes)
    return [r.config for r in expand(parse_grid(doc), load_registry())]


def test_the_labeled_set_doubles_each_iteration_and_resets_each_generation(monkeypatch):
    restarts = []
    monkeypatch.setattr(TrainContext, "restart_optimizer", lambda self: restarts.append(self.step))
    (config,) = configs()
    outcome = train_run(config, load_registry(), load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error
    metrics = [dict(p["metrics"]) for p in outcome.curves]
    # after steps 1..10 (1-based): discoveries after 2, 4 (generation 0), 6 (reset, generation 1), 8
    assert [m["labeled_now"] for m in metrics] == [20, 40, 40, 80, 80, 40, 40, 80, 80, 80]
    assert [m["generation"] for m in metrics] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert restarts == [5]  # the step whose end starts generation 1
    assert "labels_assigned_accuracy" in metrics[-1] and metrics[-1]["labels_assigned"] == 60
    # the last evaluation's diagnostics are columns of the run's row (tables of Table 2.9's label error)
    assert outcome.metrics["labels_assigned"] == 60 and outcome.metrics["labeled_now"] == 80
    assert outcome.metrics["labels_assigned_error"] == pytest.approx(100 - metrics[-1]["labels_assigned_accuracy"])
    terms = [dict(p["loss_terms"]) for p in outcome.curves]
    assert "master_consistency" not in terms[1] and "master_consistency" in terms[2]  # master from step 3


def test_snowball_and_mean_teacher_need_a_teacher_before_any_training():
    for method in ("snowball", "mean_teacher", "snowball_mixmatch"):
        with pytest.raises(UserError, match=f"method {method} needs a teacher: set ema_decay > 0"):
            configs(ema_decay=0.0, method=method)


def test_snowball_refuses_a_separate_unlabeled_pool():
    model, ctx = point_ctx()
    ctx.data.unlabeled_x = ctx.data.train_x.clone()
    with pytest.raises(UserError, match="separate pool"):
        Snowball().on_train_start(model, ctx)


# ------------------------------------------------------------------ the teacher's decay ramp (eq. 2.2)
def test_the_teacher_uses_the_early_decay_then_the_late_one():
    from ssl_bench.engine import _Networks

    nets = types.SimpleNamespace(decay=0.999, early_decay=0.99, early_steps=3)
    assert [_Networks.decay_at(nets, s) for s in range(5)] == [0.99, 0.99, 0.99, 0.999, 0.999]
    nets.early_decay = 0.0
    assert _Networks.decay_at(nets, 0) == 0.999


def test_an_early_decay_without_an_ema_is_an_error():
    with pytest.raises(UserError, match="ema_decay_early = 0.99 needs an EMA: set ema_decay > 0"):
        configs(ema_decay=0.0, ema_decay_early=0.99, ema_early_steps=5)
