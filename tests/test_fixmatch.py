"""FixMatch (plugins/methods/fixmatch.py): the loss by hand on fixed logits (mask, hard labels,
normalisation, threshold limits, the labeled view, one forward pass, batch norm over the whole
batch), and end to end on the digits, packed and solo."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_bench import Batch, UserError
from ssl_bench.engine import packable, train_pack, train_run
from ssl_bench.grid import expand, load_grid
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.fixmatch import FixMatch, pseudo_labels, unlabeled_loss

from conftest import write_grid

CPU = torch.device("cpu")


class Logits(nn.Module):
    """A fake network: each 'image' is a row of logits, returned as is; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls, self.shapes = 0, []

    def forward(self, x):
        self.calls += 1
        self.shapes.append(tuple(x.shape))
        return x * 1.0


def logits_of(*probabilities):
    return torch.tensor(probabilities).log()


# the weak view's pseudo-labels: confident rows 0 and 2 (0.97, 0.98 >= 0.95), not rows 1 and 3
WEAK = logits_of([0.97, 0.02, 0.01], [0.10, 0.85, 0.05], [0.01, 0.01, 0.98], [0.5, 0.3, 0.2])
# the strong view's predictions: the CE against the weak argmax is log 2, -log 0.6, log 2, -log 0.1
STRONG = logits_of([0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.25, 0.25, 0.5], [0.1, 0.1, 0.8])
LABELED_VIEW = logits_of([0.8, 0.1, 0.1], [0.2, 0.2, 0.6])
Y = torch.tensor([0, 1])


def batch(unlabeled: bool = True) -> Batch:
    views = {"labeled": [LABELED_VIEW.clone()]}
    if unlabeled:
        views["unlabeled"] = [WEAK.clone(), STRONG.clone()]
    # the plain batches differ from the views: the loss must use the views
    return Batch(torch.zeros(2, 3), Y, torch.zeros(4, 3) if unlabeled else None, views=views)


def test_mask_and_hard_labels():
    labels, mask = pseudo_labels(WEAK, 0.95)
    assert labels.tolist() == [0, 1, 2, 0]
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    # the mask is max q >= tau: a sample exactly at the threshold counts
    at = float(WEAK[1].softmax(0).max())
    assert pseudo_labels(WEAK, at)[1].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert pseudo_labels(WEAK, 0.0)[1].tolist() == [1.0] * 4
    assert pseudo_labels(WEAK, 1.01)[1].tolist() == [0.0] * 4


def test_unlabeled_loss_by_hand_is_normalised_by_the_unlabeled_batch():
    # masked CE summed over the two confident rows, divided by the 4 samples (not by the 2 masked)
    assert unlabeled_loss(WEAK, STRONG, 0.95).item() == pytest.approx(2 * math.log(2) / 4, rel=1e-6)
    every = (math.log(2) - math.log(0.6) + math.log(2) - math.log(0.1)) / 4
    assert unlabeled_loss(WEAK, STRONG, 0.0).item() == pytest.approx(every, rel=1e-6)
    assert unlabeled_loss(WEAK, STRONG, 1.5).item() == 0.0


def test_loss_terms_by_hand_from_the_views_in_one_forward_pass():
    model = Logits()
    terms = FixMatch(weight=2.0).loss_terms(batch(), model, None)
    assert set(terms) == {"classification", "consistency", "mask_rate"}
    assert terms["mask_rate"].item() == pytest.approx(0.5)  # monitored: recorded, not added to the loss
    # the supervised loss is of the weak labeled view (the plain x_labeled would give log 3)
    assert terms["classification"].item() == pytest.approx((-math.log(0.8) - math.log(0.2)) / 2, rel=1e-6)
    assert terms["consistency"].item() == pytest.approx(2.0 * 2 * math.log(2) / 4, rel=1e-6)
    # one pass over [labeled weak; unlabeled weak; unlabeled strong]
    assert model.calls == 1 and model.shapes == [(2 + 4 + 4, 3)]
    # the default threshold and weight are the paper's
    default = FixMatch()
    assert (default.threshold, default.weight) == (0.95, 1.0)
    assert FixMatch(threshold=0.0).loss_terms(batch(), Logits(), None)["consistency"].item() == pytest.approx(
        (math.log(2) - math.log(0.6) + math.log(2) - math.log(0.1)) / 4, rel=1e-6)
    assert FixMatch(threshold=1.5).loss_terms(batch(), Logits(), None)["consistency"].item() == 0.0


def test_the_pseudo_label_carries_no_gradient():
    b = batch()
    weak, strong = (v.requires_grad_() for v in b.views["unlabeled"])
    FixMatch(threshold=0.0).loss_terms(b, Logits(), None)["consistency"].backward()
    assert torch.count_nonzero(weak.grad) == 0
    assert torch.count_nonzero(strong.grad) > 0


def test_without_unlabeled_data_only_the_supervised_loss():
    model = Logits()
    terms = FixMatch().loss_terms(batch(unlabeled=False), model, None)
    assert list(terms) == ["classification"] and model.calls == 1
    assert terms["classification"].item() == pytest.approx((-math.log(0.8) - math.log(0.2)) / 2, rel=1e-6)
    with pytest.raises(UserError, match="needs labeled samples"):
        FixMatch().loss_terms(Batch(None, None, torch.zeros(4, 3), views={"unlabeled": [WEAK, STRONG]}), model, None)


def test_batch_norm_statistics_are_those_of_the_whole_concatenated_batch():
    bn = nn.BatchNorm1d(3, momentum=1.0)  # running_mean becomes the last batch's mean
    FixMatch().loss_terms(batch(), bn.train(), None)
    torch.testing.assert_close(bn.running_mean, torch.cat([LABELED_VIEW, WEAK, STRONG]).mean(0))


def test_declared_views_and_it_packs():
    assert FixMatch.views == {"labeled": ("weak",), "unlabeled": ("weak", "strong")}
    assert packable(FixMatch)
    with pytest.raises(UserError):
        FixMatch(threshold=-0.1)


# --------------------------------------------------------------------------- end to end
GRID = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "fixmatch"
n_labeled = 50
n_unlabeled = 200
steps = 10
eval_every = 5
labeled_per_class = 2
unlabeled_batch = 32
sampler = "uniform"
labeled_batch = 16
ema_decay = 0.9
optimizer = "sgd"
lr = 0.03
[base.optim]
nesterov = true
schedule = "cosine"
cosine_fraction = 0.4375
[base.backbones.lba_convnet]
widths = [8]
embedding_dim = 16
[base.methods.fixmatch]
threshold = {threshold}
[axes]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def reg():
    return load_registry()  # fixmatch is a built-in, discovered through ssl-bench's entry points


@pytest.fixture(scope="module")
def trained(reg, tmp_path_factory):
    """Both seeds solo and packed, at the paper's threshold and at a low one (0.15, so that an
    untrained network's pseudo-labels pass it and L_u is not 0)."""
    digits = load_digits(None)
    out = {}
    for threshold in (0.95, 0.15):
        path = write_grid(tmp_path_factory.mktemp("fixmatch"), GRID.replace("{threshold}", str(threshold)))
        configs = [r.config for r in expand(load_grid(path), reg)]
        out[threshold] = (configs, [train_run(c, reg, digits, CPU) for c in configs],
                          train_pack(configs, reg, digits, CPU))
    return out


@pytest.mark.parametrize("threshold", [0.95, 0.15])
def test_ten_steps_on_digits(trained, threshold):
    configs, solo, _ = trained[threshold]
    assert configs[0]["ema_decay"] == 0.9 and configs[0]["optim"]["cosine_fraction"] == 0.4375
    for outcome in solo:
        assert outcome.status == "ok", outcome.error
        assert outcome.pack_size == 1 and len(outcome.curves) == 2
        for point in outcome.curves:
            assert math.isfinite(point["loss"]) and math.isfinite(point["test_error"])
            assert set(point["loss_terms"]) == {"classification", "consistency", "mask_rate"}
            assert all(math.isfinite(v) for v in point["loss_terms"].values())
            assert 0 <= point["loss_terms"]["mask_rate"] <= 1
            # the reported loss is exactly the sum of the two terms (float32 per step; no diagnostic term in it)
            assert point["loss"] == pytest.approx(  # the monitored mask rate is not part of the loss
                point["loss_terms"]["classification"] + point["loss_terms"]["consistency"], rel=1e-6)
    if threshold == 0.15:
        assert any(p["loss_terms"]["consistency"] > 0 for o in solo for p in o.curves)


@pytest.mark.parametrize("threshold", [0.95, 0.15])
def test_two_seeds_pack_and_match_solo_runs(trained, threshold):
    _, solo, packed = trained[threshold]
    assert all(o.pack_size == 2 and o.status == "ok" for o in packed), [o.error for o in packed]
    assert [p["loss"] for p in solo[0].curves] != pytest.approx([p["loss"] for p in solo[1].curves])
    for a, b in zip(packed, solo):
        assert [p["loss"] for p in a.curves] == pytest.approx([p["loss"] for p in b.curves], rel=1e-4)
        for name in ("classification", "consistency", "mask_rate"):
            assert [p["loss_terms"][name] for p in a.curves] == pytest.approx(
                [p["loss_terms"][name] for p in b.curves], rel=1e-4, abs=1e-7)
