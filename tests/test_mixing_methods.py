"""VAT, the MixUp baseline and MixMatch (plugins/methods/vat.py, mixup.py, mixmatch.py, mixing.py):
the virtual adversarial direction against closed forms, sharpening and mixing by hand, the
generator-driven Beta sampler, batch-norm statistics, and short deterministic runs on the digits."""
from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import UserError
from ssl_bench.engine import train_pack, train_run
from ssl_bench.grid import expand, load_grid
from ssl_bench.method import Batch, TrainContext
from ssl_bench.registry import load_registry
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.entmin import mean_entropy
from ssl_bench_plugins.methods.mixing import beta_sample, mix, mixup_weights
from ssl_bench_plugins.methods.mixmatch import MixMatch, guess_labels, linear_rampup, sharpen
from ssl_bench_plugins.methods.mixup import MixUpBaseline
from ssl_bench_plugins.methods.vat import (VirtualAdversarialTraining, batchnorm_statistics_frozen,
                                           kl_with_logits, unit_vectors, virtual_adversarial_perturbation)

from conftest import write_grid

CPU = torch.device("cpu")


def ctx_for(seed: int = 0, num_classes: int = 3, step: int = 0, steps: int = 10) -> TrainContext:
    return TrainContext(step=step, steps=steps, num_classes=num_classes, device=CPU, data=None,
                        generator=torch.Generator().manual_seed(seed))


def linear_softmax(weight, bias=None) -> nn.Linear:
    """A linear softmax classifier on 2-D inputs, in float64 (the finite difference at xi = 1e-6
    is then exact to ~1e-6 relative)."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    model = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(bias))
    return model


def rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def sine_to(r: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """|sin| of the angle between each row of r and ``axis`` (0: parallel or anti-parallel)."""
    cos = (r @ axis) / (r.norm(dim=1) * axis.norm())
    return (1 - cos.pow(2)).clamp_min(0).sqrt()


# --------------------------------------------------------------------------- VAT
def test_vat_direction_of_a_two_class_linear_classifier_is_its_weight_difference():
    # logits z = W x + b with W = [[2, 0], [-1, 0]]: p depends on x only through x_0, the Fisher /
    # Hessian of the KL is p1 p2 (w1 - w2)(w1 - w2)^T, rank one along e_0: one power iteration
    # from any d gives r_vadv along e_0, of norm eps.
    model = linear_softmax([[2.0, 0.0], [-1.0, 0.0]], [0.3, -0.1])
    x = torch.tensor([[0.0, 0.0], [0.5, -1.0], [-1.2, 2.0], [0.1, 0.3]], dtype=torch.float64)
    r = virtual_adversarial_perturbation(model, x, model(x), xi=1e-6, eps=0.5, iterations=1,
                                         generator=torch.Generator().manual_seed(3))
    assert (sine_to(r, torch.tensor([1.0, 0.0], dtype=torch.float64)) < 1e-3).all()
    torch.testing.assert_close(r.norm(dim=1), torch.full((4,), 0.5, dtype=torch.float64), rtol=1e-12, atol=0)


def test_vat_power_iteration_is_the_power_method_on_the_fisher_matrix():
    # Three classes; logits A R^T x with A = [[3, 0], [-3, 0], [0, 0.5]], R a rotation by 30 deg.
    # At x = t R e_1 the logits are (0, 0, t/2), p = (a, a, c), and the Hessian of
    # KL(p || p(x + r)) at r = 0 is H = A' diag(18 a, c (1 - c) / 4) A'^T with A' = R, i.e.
    # eigenvalues 18 a and c (1 - c) / 4 < 18 a / 100, top eigenvector R e_0.
    rot = rotation(math.pi / 6)
    a_matrix = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    model = linear_softmax(a_matrix @ rot.T)
    t = torch.tensor([-1.0, 0.0, 0.7, 2.0], dtype=torch.float64)
    x = t[:, None] * rot[:, 1]
    c = torch.softmax(torch.stack([0 * t, 0 * t, t / 2], 1), 1)
    a, c = c[:, 0], c[:, 2]

    # one iteration: r = eps H d / ||H d|| for the generator's first normal draw d
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hessians = torch.stack([rot @ torch.diag(torch.stack([18 * ai, ci * (1 - ci) / 4])) @ rot.T
                            for ai, ci in zip(a, c)])
    hd = torch.einsum("nij,nj->ni", hessians, d)
    expected = 2.0 * hd / hd.norm(dim=1, keepdim=True)
    r1 = virtual_adversarial_perturbation(model, x, model(x), 1e-6, 2.0, 1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(r1, expected, rtol=0, atol=1e-5)

    # three iterations: parallel to the top eigenvector R e_0 (eigenvalue ratio < 1/100 per step)
    r3 = virtual_adversarial_perturbation(model, x, model(x), 1e-6, 2.0, 3, torch.Generator().manual_seed(5))
    assert (sine_to(r3, rot[:, 0]) < 1e-3).all()
    # eps scales the norm exactly, per sample, and nothing else
    r3_small = virtual_adversarial_perturbation(model, x, model(x), 1e-6, 0.25, 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(r3.norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(r3, 8 * r3_small, rtol=1e-12, atol=0)


def test_unit_vectors_are_per_sample_over_all_dimensions():
    d = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[1e-30, 0.0], [0.0, 0.0]]]])
    u = unit_vectors(d)
    torch.testing.assert_close(u[0], torch.tensor([[[0.6, 0.0], [0.0, 0.8]]]))
    assert torch.equal(u[1], torch.zeros(1, 2, 2))  # no gradient: no perturbation, not NaN
    torch.testing.assert_close(u[2].norm(), torch.tensor(1.0))  # tiny gradients survive (max-abs prescale)


def test_vat_terms_and_batchnorm_statistics_only_from_the_labeled_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))
    reference = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))
    reference.load_state_dict(model.state_dict())
    x_l, x_u = torch.randn(6, 4), 3 + 2 * torch.randn(10, 4)
    y_l = torch.tensor([0, 1, 2, 0, 1, 2])
    method = VirtualAdversarialTraining(eps=1.0, xi=1e-3, entmin=True)
    terms = method.loss_terms(Batch(x_l, y_l, x_u), model, ctx_for())
    assert set(terms) == {"classification", "vat", "entropy"}
    assert all(torch.isfinite(v) for v in terms.values()) and terms["vat"] > 0
    reference(x_l)  # the one pass that may update the running statistics
    bn, ref = model[0], reference[0]
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == 1 and bn.track_running_stats
    # the LDS is KL(p(x) || p(x + r)) with p a constant: gradients reach the weights through x + r
    sum(terms.values()).backward()
    assert model[1].weight.grad is not None and torch.isfinite(model[1].weight.grad).all()
    # the same generator seed gives the same terms; VAT without unlabeled data is the cross-entropy
    again = VirtualAdversarialTraining(eps=1.0, xi=1e-3, entmin=True).loss_terms(Batch(x_l, y_l, x_u), model, ctx_for())
    assert again["vat"].item() == terms["vat"].item()
    assert set(method.loss_terms(Batch(x_l, y_l, None), model, ctx_for())) == {"classification"}
    # entmin_weight scales the entropy term only (the MixMatch code's VAT baseline: 0.06)
    scaled = VirtualAdversarialTraining(eps=1.0, xi=1e-3, entmin=True, entmin_weight=0.06).loss_terms(
        Batch(x_l, y_l, x_u), model, ctx_for())
    torch.testing.assert_close(scaled["entropy"], 0.06 * mean_entropy(model(x_u)))
    assert scaled["vat"].item() == terms["vat"].item()


def test_kl_with_logits():
    q, p = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.5, 0.25, 0.25]])
    expected = (q * (q / p).log()).sum()
    torch.testing.assert_close(kl_with_logits(q.log(), p.log()), expected)


def test_batchnorm_freezing_keeps_eval_mode_and_restores():
    bn = nn.BatchNorm2d(2)
    with batchnorm_statistics_frozen(bn):
        bn(torch.randn(4, 2, 3, 3) + 5)
    assert bn.running_mean.abs().max() == 0 and bn.num_batches_tracked.item() == 0 and bn.track_running_stats


# --------------------------------------------------------------------------- mixing and the Beta sampler
def test_sharpening_and_label_guessing_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    torch.testing.assert_close(sharpen(p, 0.5), torch.tensor([[25.0, 9.0, 4.0]]) / 38)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    # two views' softmax averaged, then sharpened: the model is the identity on log-probabilities
    views = [torch.tensor([[0.6, 0.3, 0.1]]).log(), torch.tensor([[0.4, 0.5, 0.1]]).log()]
    torch.testing.assert_close(guess_labels(nn.Identity(), views, 0.5), torch.tensor([[0.25, 0.16, 0.01]]) / 0.42)


def test_mixing_two_hand_samples():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 1, 2)  # two 1 x 1 x 2 "images"
    y = torch.eye(2)
    perm = torch.tensor([1, 0])
    mixed_x, mixed_y = mix(x, y, 0.7, perm)
    torch.testing.assert_close(mixed_x.reshape(2, 2), torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    torch.testing.assert_close(mixed_y, torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    mixed_x, mixed_y = mix(x, y, torch.tensor([0.7, 0.9]), perm)  # one lambda per example
    torch.testing.assert_close(mixed_x.reshape(2, 2), torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
    torch.testing.assert_close(mixed_y, torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
    same_x, same_y = mix(x, y, torch.ones(2), perm)
    assert torch.equal(same_x, x) and torch.equal(same_y, y)


def test_mixup_weights_are_at_least_one_half():
    g = torch.Generator().manual_seed(1)
    lam = mixup_weights(0.75, 5000, g)
    assert lam.shape == (5000,) and (lam >= 0.5).all() and (lam <= 1).all() and lam.std() > 0.1
    per_batch = mixup_weights(0.75, 7, g, per_sample=False)
    assert per_batch.shape == (7,) and (per_batch == per_batch[0]).all() and per_batch[0] >= 0.5
    assert torch.equal(mixup_weights(0.0, 3, g), torch.ones(3))  # alpha = 0: no mixing


def test_beta_sampler_moments_and_distribution():
    x = beta_sample(0.75, (20000,), torch.Generator().manual_seed(0))
    assert x.shape == (20000,) and torch.isfinite(x).all() and ((x >= 0) & (x <= 1)).all()
    mean, var = 0.5, 0.75 ** 2 / (1.5 ** 2 * 2.5)  # a b / ((a + b)^2 (a + b + 1)) = 0.1
    assert x.mean().item() == pytest.approx(mean, rel=0.02)
    assert x.var().item() == pytest.approx(var, rel=0.02)
    assert scipy.stats.kstest(x.double().numpy(), scipy.stats.beta(0.75, 0.75).cdf).statistic < 0.015
    # shapes above and below 1 (the boost), an asymmetric Beta, and small alpha stays finite
    for a, b in [(2.0, 2.0), (0.25, 0.25), (3.0, 1.5)]:
        y = beta_sample(a, (20000,), torch.Generator().manual_seed(1), beta=b)
        assert torch.isfinite(y).all()
        assert y.mean().item() == pytest.approx(a / (a + b), rel=0.02)
        assert y.var().item() == pytest.approx(a * b / ((a + b) ** 2 * (a + b + 1)), rel=0.03)


def test_beta_sampler_is_determined_by_the_generator():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return beta_sample(0.75, (3, 4), g), beta_sample(0.75, (3, 4), g)

    (a1, a2), (b1, b2), (c1, _) = draw(7), draw(7), draw(8)
    assert a1.shape == (3, 4)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    beta_sample(0.75, (100,), torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched


# --------------------------------------------------------------------------- MixMatch and the MixUp baseline
def tiny_batch(seed: int = 0, k: int = 2) -> tuple[nn.Module, Batch]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x_l, y_l = torch.randn(3, 1, 2, 2), torch.tensor([0, 2, 1])
    u = torch.randn(5, 1, 2, 2)
    views = {"labeled": [x_l + 0.1], "unlabeled": [u + 0.1 * i for i in range(k)]}
    return model, Batch(x_l, y_l, u, views=views)


def test_mixmatch_without_mixing_is_cross_entropy_plus_squared_error_to_the_sharpened_guess():
    model, batch = tiny_batch()
    (x_hat,), views = batch.views["labeled"], batch.views["unlabeled"]
    terms = MixMatch(alpha=0.0, lambda_u=75.0, ramp_up=10).loss_terms(batch, model, ctx_for(step=4))
    with torch.no_grad():
        q = sharpen((model(views[0]).softmax(1) + model(views[1]).softmax(1)) / 2, 0.5)
        expected_x = F.cross_entropy(model(x_hat), batch.y_labeled)
        # eq. 4: 1 / (L |U'|) sum ||q - p||^2 over both views' copies
        squared = sum(((q - model(v).softmax(1)) ** 2).sum() for v in views) / (3 * 10)
    torch.testing.assert_close(terms["classification"], expected_x)
    torch.testing.assert_close(terms["consistency"], 75.0 * 0.4 * squared)  # linear ramp: 4 / 10


def test_mixmatch_mixes_across_labeled_and_unlabeled_with_lambda_prime():
    model, batch = tiny_batch()
    seen = []
    net = nn.Sequential(model)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    terms = MixMatch().loss_terms(batch, net, ctx_for(seed=11))
    # replay the generator: W = Shuffle(Concat(X^, U^_1, U^_2)), lambda' per example
    g = torch.Generator().manual_seed(11)
    all_x = torch.cat([batch.views["labeled"][0], *batch.views["unlabeled"]])
    perm = torch.randperm(13, generator=g)
    lam = mixup_weights(0.75, 13, g)
    assert (lam >= 0.5).all() and len(set(lam.tolist())) == 13  # one lambda per example
    expected = lam.reshape(-1, 1, 1, 1) * all_x + (1 - lam.reshape(-1, 1, 1, 1)) * all_x[perm]
    assert len(seen) == 3  # two guessing passes, then one pass over Concat(X', U')
    torch.testing.assert_close(seen[2], expected)
    assert terms["consistency"].item() == 0.0  # step 0 of the ramp
    with pytest.raises(UserError, match="needs labeled samples"):
        MixMatch().loss_terms(Batch(None, None, batch.x_unlabeled, views=batch.views), model, ctx_for())
    # no unlabeled data: supervised MixUp of X^ alone
    labeled_only = Batch(batch.x_labeled, batch.y_labeled, None, views={"labeled": batch.views["labeled"]})
    alone = MixMatch().loss_terms(labeled_only, model, ctx_for())
    assert set(alone) == {"classification"} and torch.isfinite(alone["classification"])


def test_mixmatch_and_mixup_update_batchnorm_statistics_once():
    for method, k in [(MixMatch(), 2), (MixUpBaseline(), 1), (MixUpBaseline(partners="all"), 1)]:
        _, batch = tiny_batch(k=k)
        model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(4, 3))
        terms = method.loss_terms(batch, model, ctx_for())
        assert model[0].num_batches_tracked.item() == 1, method
        assert all(torch.isfinite(v) for v in terms.values())


def test_mixup_baseline_without_mixing_by_hand():
    model, batch = tiny_batch(k=1)
    (x_hat,), (u_hat,) = batch.views["labeled"], batch.views["unlabeled"]
    with torch.no_grad():
        q = model(u_hat).softmax(1)  # no sharpening
        expected_x = F.cross_entropy(model(x_hat), batch.y_labeled)
        expected_ce = -(q * model(u_hat).log_softmax(1)).sum(1).mean()
        expected_se = F.mse_loss(model(u_hat).softmax(1), q)  # 0: the guess is the prediction
    for partners in ("own", "all"):
        terms = MixUpBaseline(alpha=0.0, partners=partners).loss_terms(batch, model, ctx_for())
        torch.testing.assert_close(terms["classification"], expected_x)
        torch.testing.assert_close(terms["consistency"], expected_ce)
    terms = MixUpBaseline(alpha=0.0, unlabeled_loss="squared_error", weight=2.0, ramp_up=10).loss_terms(
        batch, model, ctx_for(step=5))
    torch.testing.assert_close(terms["consistency"], 2.0 * math.exp(-5 * 0.25) * expected_se)
    # with mixing, "own" never mixes a labeled example with an unlabeled one: rows of X' are
    # combinations of labeled images only
    seen = []
    net = nn.Sequential(model)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    MixUpBaseline().loss_terms(batch, net, ctx_for(seed=2))
    mixed_x = seen[1].flatten(1)  # passes: guess, X', U'
    basis = x_hat.flatten(1)  # 3 labeled images in R^4: X' lies in their span
    coef = torch.linalg.lstsq(basis.T, mixed_x.T).solution
    torch.testing.assert_close(basis.T @ coef, mixed_x.T, atol=1e-5, rtol=0)
    assert torch.allclose(coef.sum(0), torch.ones(3), atol=1e-5)  # convex combinations


def test_linear_rampup():
    assert [linear_rampup(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_rampup(0, 0) == 1.0


# --------------------------------------------------------------------------- end to end on the digits
@pytest.fixture(scope="module")
def reg():
    return load_registry()  # vat, mixup, mixmatch are built-ins, discovered through ssl-bench's entry points


RUN = """
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
[base.backbones.lba_convnet]
widths = [8]
embedding_dim = 16
[base.methods.{method}]
{settings}
"""

CASES = {
    "vat": ("vat", "eps = 2.0\nentmin = true", {"classification", "vat", "entropy"}),
    "mixup": ("mixup", "alpha = 0.75", {"classification", "consistency"}),
    "mixup_all_l2": ("mixup", 'partners = "all"\nunlabeled_loss = "squared_error"\nramp_up = 5\nlambda_per = "batch"',
                     {"classification", "consistency"}),
    "mixmatch": ("mixmatch", "ramp_up = 4", {"classification", "consistency"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_method_trains_on_digits_reproducibly(reg, tmp_path, case):
    method, settings, names = CASES[case]
    (run,) = expand(load_grid(write_grid(tmp_path, RUN.format(method=method, settings=settings))), reg)
    digits = load_digits(None)
    first, second = (train_run(run.config, reg, digits, CPU) for _ in range(2))
    assert first.status == "ok", first.error
    assert len(first.curves) == 2
    for point in first.curves:
        assert set(point["loss_terms"]) == names
        assert math.isfinite(point["loss"]) and all(math.isfinite(v) for v in point["loss_terms"].values())
    assert math.isfinite(first.metrics["test_error"])
    if case == "mixmatch":  # the ramp has started by the second evaluation
        assert first.curves[-1]["loss_terms"]["consistency"] > 0
    # the same run twice: identical curves (every random number from the run's generator)
    assert [(p["loss"], p["loss_terms"]) for p in first.curves] == [(p["loss"], p["loss_terms"]) for p in second.curves]
    assert first.metrics["test_error"] == second.metrics["test_error"]


def test_a_pack_falls_back_to_solo_runs_with_the_same_results(reg, tmp_path):
    # random numbers inside the loss: no generator inside a pack, so the runs train one by one
    text = RUN.format(method="mixmatch", settings="ramp_up = 2").replace("steps = 10", "steps = 4")
    text += "[axes]\nseed = [0, 1]\n"
    configs = [r.config for r in expand(load_grid(write_grid(tmp_path, text)), reg)]
    digits = load_digits(None)
    packed = train_pack(configs, reg, digits, CPU)
    assert [(o.status, o.pack_size) for o in packed] == [("ok", 1), ("ok", 1)]
    solo = [train_run(c, reg, digits, CPU) for c in configs]
    assert [[p["loss"] for p in o.curves] for o in packed] == [[p["loss"] for p in o.curves] for o in solo]


def test_hyperparameters_are_validated(reg):
    with pytest.raises(UserError, match="lambda_per"):
        MixMatch(lambda_per="pair")
    with pytest.raises(UserError, match="partners"):
        MixUpBaseline(partners="everyone")
    assert reg.method("vat") is VirtualAdversarialTraining and reg.method("mixmatch") is MixMatch
    assert MixMatch.views == {"labeled": ("weak",), "unlabeled": ("weak", "weak")}
    defaults = {p.name: p.default for p in VirtualAdversarialTraining.params()}
    assert defaults == {"weight": 1.0, "eps": 8.0, "xi": 1e-6, "power_iterations": 1, "entmin": False,
                        "entmin_weight": 1.0}
