"""The consistency methods (plugins/methods/pi_model.py, temporal_ensembling.py, mean_teacher.py)
and their shared ramp (ramps.py): hand-computed losses on a tiny linear model, the temporal
ensemble's bias correction, Mean Teacher's use of the engine's EMA teacher, and each method
end to end on the digits."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_bench import Batch, TrainContext, UserError
from ssl_bench.engine import packable, train_pack, train_run
from ssl_bench.grid import expand, load_grid
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods import mean_teacher, pi_model, temporal_ensembling
from ssl_bench_plugins.methods.mean_teacher import MeanTeacher
from ssl_bench_plugins.methods.pi_model import PiModel
from ssl_bench_plugins.methods.ramps import sigmoid_rampup
from ssl_bench_plugins.methods.temporal_ensembling import TemporalEnsembling

from conftest import write_grid

CPU = torch.device("cpu")
PLUGINS = {"pi_model": pi_model, "temporal_ensembling": temporal_ensembling, "mean_teacher": mean_teacher}


@pytest.fixture(scope="module")
def reg():
    return load_registry()  # the three methods are built-ins, discovered through ssl-bench's entry points


@pytest.fixture(scope="module")
def digits():
    return load_digits(None)


def identity_model() -> nn.Module:
    """logits = x: a 2-in, 2-out linear layer with identity weights and no bias."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    return model


def context(step: int, steps: int = 100, ema_model=None) -> TrainContext:
    return TrainContext(step=step, steps=steps, num_classes=2, device=CPU, data=None, generator=None,
                        ema_model=ema_model)


def tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


E = math.e
S = E / (1 + E)  # softmax([1, 0])[0]
CE_2_0 = math.log(1 + math.exp(-2))  # cross-entropy of logits [2, 0] against class 0


# --------------------------------------------------------------------------- the ramp
def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0  # flat after the ramp
    assert sigmoid_rampup(0, 0) == sigmoid_rampup(7, 0) == 1.0  # length 0: no ramp


# --------------------------------------------------------------------------- Π-model
def test_pi_model_loss_by_hand():
    v1 = tensor([[0, 0], [1, 0]]).requires_grad_()
    v2 = tensor([[0, 0], [0, 1]]).requires_grad_()
    batch = Batch(tensor([[2, 0]]), torch.tensor([0]), tensor([[0, 0], [0, 0]]), views={"unlabeled": [v1, v2]})
    terms = PiModel(weight=10.0, ramp_up=100).loss_terms(batch, identity_model(), context(step=50))
    assert terms["classification"].item() == pytest.approx(CE_2_0)
    # sample 1: [0.5, 0.5] twice, no difference; sample 2: [s, 1-s] vs [1-s, s], squared norm 2 (2s-1)^2;
    # divided by C |B| = 2 * 2; w = 10 exp(-5/4) half-way through the ramp
    by_hand = 10 * math.exp(-1.25) * 2 * (2 * S - 1) ** 2 / 4
    assert terms["consistency"].item() == pytest.approx(by_hand, rel=1e-6)
    # both evaluations carry gradients (Algorithm 1 has no stop-gradient)
    g1, g2 = torch.autograd.grad(terms["consistency"], [v1, v2])
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0


def test_pi_model_without_unlabeled_data_is_supervised():
    batch = Batch(tensor([[2, 0]]), torch.tensor([0]), None)
    assert set(PiModel().loss_terms(batch, identity_model(), context(0))) == {"classification"}


# --------------------------------------------------------------------------- temporal ensembling
def test_temporal_ensembling_bias_correction():
    te = TemporalEnsembling(alpha=0.6)
    te.reset(pool_size=5, num_classes=3, device=CPU)
    z1, z2 = tensor([[0.2, 0.5, 0.3]]), tensor([[0.0, 1.0, 0.0]])
    idx = torch.tensor([2])
    _, seen = te.targets(torch.arange(5))
    assert not seen.any()
    te.accumulate(idx, z1)
    target, seen = te.targets(idx)
    torch.testing.assert_close(target, z1)  # one update: z~ is that prediction exactly
    assert seen.tolist() == [True] and te.updates.tolist() == [0, 0, 1, 0, 0]
    te.accumulate(idx, z2)
    # Z = 0.6 * 0.4 z1 + 0.4 z2 = 0.24 z1 + 0.4 z2, divided by 1 - 0.6^2 = 0.64
    torch.testing.assert_close(te.targets(idx)[0], tensor([[0.375 * 0.2, 0.375 * 0.5 + 0.625, 0.375 * 0.3]]))


def test_temporal_ensembling_repeated_images_update_in_batch_order():
    z = torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), 1)
    idx = torch.tensor([3, 1, 3, 0, 3])
    once = TemporalEnsembling(alpha=0.6)
    once.reset(5, 4, CPU)
    once.accumulate(idx, z)
    one_by_one = TemporalEnsembling(alpha=0.6)
    one_by_one.reset(5, 4, CPU)
    for i in range(5):
        one_by_one.accumulate(idx[i:i + 1], z[i:i + 1])
    torch.testing.assert_close(once.ensemble, one_by_one.ensemble)
    assert once.updates.tolist() == one_by_one.updates.tolist() == [1, 1, 0, 3, 0]


def test_temporal_ensembling_loss_by_hand():
    te = TemporalEnsembling(weight=4.0, ramp_up=0, alpha=0.6)
    te.reset(pool_size=6, num_classes=2, device=CPU)
    te.accumulate(torch.tensor([2]), tensor([[0.25, 0.75]]))
    view = tensor([[1, 0], [0, 0]])
    batch = Batch(tensor([[2, 0]]), torch.tensor([0]), view, idx_unlabeled=torch.tensor([2, 4]),
                  views={"unlabeled": [view]})
    terms = te.loss_terms(batch, identity_model(), context(step=3))
    assert terms["classification"].item() == pytest.approx(CE_2_0)
    # image 2 has the target [0.25, 0.75]; image 4 none yet (adds 0); divided by C n = 4
    by_hand = 4.0 * ((S - 0.25) ** 2 + (1 - S - 0.75) ** 2) / 4
    assert terms["consistency"].item() == pytest.approx(by_hand, rel=1e-6)
    # the step's predictions enter the ensemble after the step, not before
    assert te.updates.tolist() == [0, 0, 1, 0, 0, 0]
    te.on_step_end(None, None)
    assert te.updates.tolist() == [0, 0, 2, 0, 1, 0]
    torch.testing.assert_close(te.targets(torch.tensor([4]))[0], tensor([[0.5, 0.5]]))


def test_temporal_ensembling_rejects_alpha_of_one():
    with pytest.raises(Exception, match="alpha must be below 1"):
        TemporalEnsembling(alpha=1.0)


# --------------------------------------------------------------------------- Mean Teacher
class FixedTeacher(nn.Module):
    """A fake EMA model: fixed logits whatever the input; records what it saw."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, []

    def forward(self, x):
        self.seen.append(x)
        return self.logits.expand(len(x), -1)


def test_mean_teacher_consistency_uses_the_ema_model():
    teacher = FixedTeacher(tensor([[0, 1]]))
    student_view, teacher_view = tensor([[1, 0], [0, 0]]).requires_grad_(), tensor([[5, 5], [6, 6]])
    batch = Batch(tensor([[2, 0]]), torch.tensor([0]), tensor([[0, 0], [0, 0]]),
                  views={"unlabeled": [student_view, teacher_view]})
    terms = MeanTeacher(consistency_weight=3.0, ramp_up=100).loss_terms(
        batch, identity_model(), context(step=100, ema_model=teacher))
    assert terms["classification"].item() == pytest.approx(CE_2_0)
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], teacher_view)  # the teacher sees the second view
    # teacher: [1-s, s] for both; student: [s, 1-s] and [0.5, 0.5]; mean over C n = 4 entries; ramp done: w = 3
    by_hand = 3.0 * (2 * (2 * S - 1) ** 2 + 2 * (S - 0.5) ** 2) / 4
    assert terms["consistency"].item() == pytest.approx(by_hand, rel=1e-6)
    (grad,) = torch.autograd.grad(terms["consistency"], [student_view])
    assert grad.abs().sum() > 0


def test_mean_teacher_without_ema_decay_says_so(reg, tmp_path, digits):
    batch = Batch(tensor([[2, 0]]), torch.tensor([0]), None)
    with pytest.raises(ValueError, match="ema_decay"):
        MeanTeacher().loss_terms(batch, identity_model(), context(0, ema_model=None))
    # in a grid: an error when the grid is read, before any training (Method.needs_ema)
    with pytest.raises(UserError, match="method mean_teacher needs a teacher: set ema_decay > 0"):
        configs(reg, tmp_path, "mean_teacher", extra="")


# --------------------------------------------------------------------------- end to end on the digits
GRID = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "{method}"
n_labeled = 50
n_unlabeled = 200
steps = 10
eval_every = 5
labeled_per_class = 2
unlabeled_batch = 16
{extra}
[base.methods.{method}]
ramp_up = 5
[base.backbones.lba_convnet]
widths = [8]
embedding_dim = 16
"""
EXTRA = {"pi_model": "", "temporal_ensembling": "", "mean_teacher": "ema_decay = 0.9"}


def configs(reg, tmp_path, method: str, extra: str | None = None, axes: str = "") -> list[dict]:
    text = GRID.format(method=method, extra=EXTRA[method] if extra is None else extra) + axes
    return [run.config for run in expand(load_grid(write_grid(tmp_path, text)), reg)]


@pytest.mark.parametrize("method", list(PLUGINS))
def test_trains_on_digits(reg, tmp_path, digits, method):
    (config,) = configs(reg, tmp_path, method)
    outcome = train_run(config, reg, digits, CPU)
    assert outcome.status == "ok", outcome.error
    assert [p["step"] for p in outcome.curves] == [5, 10]
    for point in outcome.curves:
        assert math.isfinite(point["loss"])
        assert set(point["loss_terms"]) >= {"classification", "consistency"}
        assert all(math.isfinite(v) for v in point["loss_terms"].values())
    assert outcome.curves[-1]["loss_terms"]["consistency"] > 0
    assert math.isfinite(outcome.metrics["test_error"])
    if method == "temporal_ensembling":  # 10 steps x 16 draws from 200 images: most have a target
        coverage = [p["metrics"]["ensemble_coverage"] for p in outcome.curves]
        assert 0 < coverage[0] < coverage[1] <= 100


@pytest.mark.parametrize("method", ["mean_teacher", "pi_model"])
def test_packs_like_solo_runs(reg, tmp_path, digits, method):
    runs = configs(reg, tmp_path, method, axes="[axes]\nseed = [0, 1]\n")
    packed = train_pack(runs, reg, digits, CPU)
    assert all(o.pack_size == 2 and o.status == "ok" for o in packed), [o.error for o in packed]
    for a, b in zip(packed, [train_run(c, reg, digits, CPU) for c in runs]):
        assert [p["loss"] for p in a.curves] == pytest.approx([p["loss"] for p in b.curves], rel=1e-4)


def test_temporal_ensembling_trains_solo(reg, tmp_path, digits):
    assert packable(PiModel) and packable(MeanTeacher) and not packable(TemporalEnsembling)
    runs = configs(reg, tmp_path, "temporal_ensembling", axes="[axes]\nseed = [0, 1]\n")
    assert all(o.pack_size == 1 and o.status == "ok" for o in train_pack(runs, reg, digits, CPU))
