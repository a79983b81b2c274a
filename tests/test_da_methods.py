"""The domain-adaptation methods (assoc_da, mmd_da, dann) on hand-computed cases: the delay
schedule, the MMD of two known point sets, gradient reversal, DANN's lambda, and a short
digits -> inverted-digits run of each (solo and packed)."""
from __future__ import annotations

import math
import textwrap
import tomllib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.backbone import Classifier
from ssl_bench.engine import train_pack, train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.method import Batch, TrainContext
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits, load_digits_inverted
from ssl_bench_plugins.methods.assoc_da import AssociativeDomainAdaptation
from ssl_bench_plugins.methods.association import associate
from ssl_bench_plugins.methods.dann import DomainAdversarial, reverse_gradient
from ssl_bench_plugins.methods.mmd_da import MMDDomainAdaptation, mmd2
from ssl_bench_plugins.methods.ramps import dann_lambda, step_after

CPU = torch.device("cpu")


def ctx(step: int, steps: int = 100) -> TrainContext:
    return TrainContext(step=step, steps=steps, num_classes=3, device=CPU, data=None,
                        generator=torch.Generator().manual_seed(0))


class Flat(nn.Module):
    embedding_dim = 4

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


def model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(Flat(), 3)


def batch() -> Batch:
    torch.manual_seed(1)
    return Batch(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), 2 + torch.randn(8, 4))


# ------------------------------------------------------------------ schedules
def test_the_delay_is_a_step_function():
    assert [step_after(s, 500) for s in (0, 499, 500, 10_000)] == [0.0, 0.0, 1.0, 1.0]
    assert step_after(0, 0) == 1.0


def test_dann_lambda_grows_from_zero_to_one():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.9866
    assert dann_lambda(1.0) == pytest.approx(0.99991, abs=1e-5) and dann_lambda(2.0) == dann_lambda(1.0)


# ------------------------------------------------------------------ assoc_da
def test_assoc_da_is_classification_before_the_delay_and_lba_after_it():
    net, b = model(), batch()
    method = AssociativeDomainAdaptation(visit_weight=0.5, delay=10, weight=2.0)
    before, after = method.loss_terms(b, net, ctx(9)), method.loss_terms(b, net, ctx(10))
    a, t = net.embed(b.x_labeled), net.embed(b.x_unlabeled)
    association = associate(a, t, b.y_labeled)
    assert before["walker"].item() == 0.0 and before["visit"].item() == 0.0
    torch.testing.assert_close(after["walker"], 2.0 * association.walker_loss)
    torch.testing.assert_close(after["visit"], 2.0 * 0.5 * association.visit_loss)
    torch.testing.assert_close(after["classification"], F.cross_entropy(net(b.x_labeled), b.y_labeled))
    assert set(method.loss_terms(Batch(b.x_labeled, b.y_labeled, None), net, ctx(50))) == {"classification"}


# ------------------------------------------------------------------ mmd_da
def test_mmd_of_two_known_point_sets_by_hand():
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [4.0]])
    # pooled squared distances: 0 x4, 1 x4, 4 x2, 9 x4, 16 x2 -> median (lower middle) h0 = 1
    k = lambda d: sum(math.exp(-d / s) for s in (0.25, 0.5, 1.0, 2.0, 4.0))  # noqa: E731
    within = (2 * k(0) + 2 * k(1)) / 4
    between = (k(9) + k(16) + k(4) + k(9)) / 4
    assert mmd2(a, b).item() == pytest.approx(2 * within - 2 * between, rel=1e-6)
    assert mmd2(a, a.clone()).abs().item() < 1e-6


def test_the_mmd_gradient_pulls_the_target_towards_the_source():
    a = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    b = (a + 3.0).requires_grad_()
    loss = mmd2(a, b)
    loss.backward()
    assert loss.item() > 0.5 and (b.grad.sum(0) > 0).all()  # descending moves b back towards a (-3)


def test_mmd_da_terms():
    net, b = model(), batch()
    terms = MMDDomainAdaptation(weight=3.0, delay=5).loss_terms(b, net, ctx(5))
    torch.testing.assert_close(terms["mmd"], 3.0 * mmd2(net.embed(b.x_labeled), net.embed(b.x_unlabeled)))
    assert MMDDomainAdaptation(delay=5).loss_terms(b, net, ctx(4))["mmd"].item() == 0.0


# ------------------------------------------------------------------ dann
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * torch.tensor([1.0, 2.0, 3.0]))


def test_dann_domain_classifier_and_its_loss():
    net, b = model(), batch()
    method = DomainAdversarial(hidden=[5])
    net.extras.update(method.build_modules(net, 3))
    d = net.extras["domain_classifier"]
    assert [m.out_features for m in d if isinstance(m, nn.Linear)] == [5, 1] and d[0].in_features == 4
    terms = method.loss_terms(b, net, ctx(50))
    logits = torch.cat([d(net.embed(b.x_labeled)), d(net.embed(b.x_unlabeled))]).squeeze(1)
    expected = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.zeros(6), torch.ones(8)]))
    torch.testing.assert_close(terms["domain"], expected)
    # the domain classifier descends L_d; the feature extractor gets -lambda times that gradient
    terms["domain"].backward()
    reversed_grad = net.backbone.linear.weight.grad.clone()
    net.zero_grad()
    expected.backward()
    torch.testing.assert_close(reversed_grad, -dann_lambda(0.5) * net.backbone.linear.weight.grad)


# ------------------------------------------------------------------ end to end
GRID = """
[base]
task = "domain_adaptation"
dataset = "digits"
target = "digits_inverted"
backbone = "lba_convnet"
n_labeled = 100
n_unlabeled = "all"
steps = 12
eval_every = 6
labeled_per_class = 3
unlabeled_batch = 30
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[base.methods.assoc_da]
delay = 4
[base.methods.mmd_da]
delay = 4
[axes]
method = ["assoc_da", "mmd_da", "dann"]
seed = [0, 1]
"""


@pytest.mark.parametrize("method", ["assoc_da", "mmd_da", "dann"])
def test_each_da_method_trains_digits_to_inverted_digits_packed_as_alone(method):
    reg = load_registry()
    configs = [r.config for r in expand(parse_grid(tomllib.loads(textwrap.dedent(GRID))), reg)
               if r.config["method"] == method]
    data = {"source": load_digits(None), "target": load_digits_inverted(None)}
    alone = [train_run(c, reg, data, CPU) for c in configs]
    assert all(o.status == "ok" for o in alone), [o.error for o in alone]
    assert all(math.isfinite(o.metrics["test_mmd"]) for o in alone)
    terms = alone[0].curves[-1]["loss_terms"]
    assert {"assoc_da": {"walker", "visit"}, "mmd_da": {"mmd"}, "dann": {"domain"}}[method] <= set(terms)
    packed = train_pack(configs, reg, data, CPU)
    assert [o.pack_size for o in packed] == [2, 2]
    for solo, pack in zip(alone, packed):
        assert abs(solo.metrics["test_error"] - pack.metrics["test_error"]) <= 1.0  # a test image or two
