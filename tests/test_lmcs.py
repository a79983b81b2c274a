"""LMCS (seed 003, ch. 3): the rank weights and soft labels of eqs. 3.10-3.11 by hand, the
confined maximum-entropy set on a hand-made feature set, the composition's shapes and which
parameters its loss trains, and the look-ahead (the student's labels lag the master's)."""
from __future__ import annotations

import copy
import math
import textwrap
import tomllib
import types

import pytest
import torch
from torch import nn

from ssl_bench.backbone import Classifier
from ssl_bench.data import RunLabels
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.method import Batch, TrainContext
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.lmcs import (LMCS, LearnedModelComposition, critical_samples, entropy_bits,
                                            rank_weights, soft_labels)

CPU = torch.device("cpu")


def test_rank_weights_and_soft_labels_by_hand():
    # eq. 3.10 with beta = 0.5 and 4 labeled samples: 0.5 / (0.5 + R / 4), R = 1..4
    assert rank_weights(4, 0.5).tolist() == pytest.approx([2 / 3, 1 / 2, 2 / 5, 1 / 3])
    labeled = torch.tensor([[0.0], [1.0], [10.0], [12.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # x' = 2: ranks 1 (x = 1), 2 (x = 0), 3 (x = 10), 4 (x = 12) -> class 0 gets 2/3 + 1/2
    p = soft_labels(torch.tensor([[2.0]]), labeled, labels, 2, 0.5)
    total = 2 / 3 + 1 / 2 + 2 / 5 + 1 / 3
    assert p[0].tolist() == pytest.approx([(2 / 3 + 1 / 2) / total, (2 / 5 + 1 / 3) / total])
    h = entropy_bits(p)
    assert h.item() == pytest.approx(-sum(q * math.log2(q) for q in p[0].tolist()))
    assert entropy_bits(torch.tensor([[1.0, 0.0], [0.5, 0.5]])).tolist() == pytest.approx([0.0, 1.0])


def test_confined_maximum_entropy_searches_only_the_confined_set():
    # class 0 at x = 0, 4; class 1 at x = 6, 10 (centres 2 and 8)
    labeled = torch.tensor([[0.0], [4.0], [6.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # candidates x = 1.5, 8.5, 5.05, 20: distances to the nearest centre 0.5, 0.5, 2.95, 12; the
    # labeled samples by nearness: c0 c0 c1 c1, c1 c1 c0 c0, c1 c0 c1 c0 (the most ambiguous), c1 c1 c0 c0
    candidates = torch.tensor([[1.5], [8.5], [5.05], [20.0]])
    h = entropy_bits(soft_labels(candidates, labeled, labels, 2, 0.5))
    assert h[2] > h[0] and h[0] == pytest.approx(h[1]) and h[0] == pytest.approx(h[3])
    # confined half: Delta = median of d = 1.725, so x = 5.05 is out although it is the most ambiguous
    chosen, hard = critical_samples(candidates, labeled, labels, 2, 2, "confined_max_entropy", 0.5, 0.5)
    assert sorted(chosen.tolist()) == [0, 1] and hard[chosen.argsort()].tolist() == [0, 1]
    chosen, hard = critical_samples(candidates, labeled, labels, 2, 1, "unconfined_max_entropy", 0.5, 0.5)
    assert chosen.tolist() == [2] and hard.tolist() == [1]  # nearest centre: 8 (2.95 < 3.05)
    _, vote = critical_samples(candidates, labeled, labels, 2, 1, "unconfined_max_entropy", 0.5, 0.5, "vote")
    assert vote.tolist() == [1]  # class 1 holds ranks 1 and 3: 2/3 + 2/5 > 1/2 + 1/3
    chosen, _ = critical_samples(candidates, labeled, labels, 2, 1, "confined_min_entropy", 0.5, 0.75)
    assert chosen.tolist()[0] in (0, 1)  # x = 5.05 is confined now but the least certain
    chosen, hard = critical_samples(candidates, labeled, labels, 2, 2, "min_distance", 0.5, 0.5)
    assert sorted(chosen.tolist()) == [0, 1]


class Flat(nn.Module):
    embedding_dim = 3

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_the_composition_shapes_start_and_what_its_loss_trains():
    torch.manual_seed(0)
    lmc = LearnedModelComposition(3, 4)
    assert [tuple(c.weight.shape) for c in lmc.converters] == [(3, 3)] * 3 and lmc.decision.out_features == 4
    f = [torch.randn(5, 3) for _ in range(3)]
    assert torch.allclose(lmc.fuse(f), (f[0] + f[1] + f[2]) / 3, atol=1e-6)  # starts as the mean
    assert lmc(f).shape == (5, 4)

    method = LMCS(step_length=2, ramp_up=0)
    model = Classifier(Flat(), 4)
    model.extras.update(method.build_modules(model, 4))
    train_x = (torch.rand(12, 1, 1, 2) * 255).to(torch.uint8)
    data = types.SimpleNamespace(train_x=train_x, unlabeled_x=train_x, unlabeled=torch.arange(12),
                                 normalise=lambda x: x.float() / 255, training_batch=lambda x: x.float() / 255,
                                 test_x=train_x, test_y=torch.zeros(12, dtype=torch.long))
    labels = RunLabels(torch.tensor([0, 1, 2, 3] + [-1] * 8), None)
    ema = copy.deepcopy(model).requires_grad_(False)
    ctx = TrainContext(step=1, steps=10, num_classes=4, device=CPU, data=data,
                       generator=torch.Generator().manual_seed(0), labels=labels, ema_model=ema)
    method.on_train_start(model, ctx)
    method.eta = 0.0  # no k-means in this test
    method.on_step_end(model, ctx)  # the end of LMCS step 1: the master is composed
    assert method.previous is not None and method.master is not None
    assert torch.equal(model.extras["lmc"].decision.weight, ema.head.weight)  # the decision net starts as the EMA head
    x = torch.rand(4, 1, 1, 2)
    batch = Batch(x, torch.tensor([0, 1, 2, 3]), torch.rand(6, 1, 1, 2),
                  views={"labeled": [x], "unlabeled": [torch.rand(6, 1, 1, 2), torch.rand(6, 1, 1, 2)]})
    terms = method.loss_terms(batch, model, ctx)
    assert {"classification", "consistency", "master_consistency", "master_classification"} <= set(terms)
    model.zero_grad()
    (terms["master_consistency"] + terms["master_classification"]).backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith("extras.lmc.") for name in trained)  # students are constants
    model.zero_grad()
    terms["classification"].backward()
    assert all(p.grad is None for p in model.extras.parameters())  # the student's loss does not train the master


GRID = """
name = "lmcs_test"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lmcs"
n_labeled = 10
n_unlabeled = "all"
labeled_per_class = 2
unlabeled_batch = 20
steps = 8
eval_every = 2
last_k = 1
ema_decay = 0.99
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[base.methods.lmcs]
step_length = 2
growth_limit = 4.0
generations = 2
ramp_up = 0
kmeans_images = 200
[axes]
seed = [0]
"""


def test_the_student_trains_on_the_previous_generation_the_master_on_the_current():
    (run,) = expand(parse_grid(tomllib.loads(textwrap.dedent(GRID))), load_registry())
    outcome = train_run(run.config, load_registry(), load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error
    m = [dict(p["metrics"]) for p in outcome.curves]
    # master: 10 -> 20 -> 40 (x4: generation 1 ends, the student gets 40) -> 80 -> 160 (generation 2 ends)
    assert [x["master_labeled"] for x in m] == [20, 40, 80, 160]
    assert [x["generation"] for x in m] == [0, 1, 1, 2]
    assert [x.get("labels_assigned", 0) for x in m] == [0, 30, 30, 150]  # the student lags a generation
    assert all(0 <= x["master_test_error"] <= 100 for x in m)
    assert outcome.metrics["master_labeled"] == 160
