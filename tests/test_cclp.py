"""CCLP (Kamnitsas et al. 2018, Algorithm 1, eqs. 2-9) and entropy minimisation (Grandvalet &
Bengio 2005): the pieces against independent computations, numerics at large embedding norms,
hyperparameter validation, the loss terms, and one short run each through registry and engine.

Expected values are computed here independently of the functions under test: label
propagation by iterating Phi <- H Phi with the labeled rows clamped, T and M as fractions
written out by hand, the Markov-chain losses with explicit Python sums over paths.
"""
from __future__ import annotations

import math
import tomllib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import Batch, Classifier, TrainContext, UserError
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.registry import load_registry
from ssl_bench_plugins.methods.cclp import (CompactClustering, cclp, compact_target, label_agreement, label_propagation,
                                    markov_chain_losses, smooth, transition_matrix)
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.methods.entmin import EntropyMinimisation, mean_entropy


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def row_normalise(a):
    a = t64(a)
    return a / a.sum(1, keepdim=True)


def iterative_lp(h: torch.Tensor, y_l: torch.Tensor, iterations: int = 20000) -> torch.Tensor:
    """Label propagation by iteration (Zhu & Ghahramani 2002): Phi <- H Phi, labeled rows
    clamped to Y_L, unlabeled rows started at zero."""
    n_l = y_l.shape[0]
    phi = torch.cat([y_l, torch.zeros(h.shape[0] - n_l, y_l.shape[1], dtype=torch.float64)])
    for _ in range(iterations):
        phi = h @ phi
        phi[:n_l] = y_l
    return phi


# ------------------------------------------------------------------ label propagation (eq. 5)
# Labeled nodes 0 (class 0), 1 (class 1), 2 (class 2); unlabeled 3..6 form a chain
# 0 - 3 - 4 - 5 - 1 with a weak link 4 - 6 - 2, plus weak all-pairs links (smoothing-like).
CHAIN_A = [[0.0] * 7 for _ in range(7)]
for i, j, w in [(0, 3, 5.0), (3, 4, 3.0), (4, 5, 3.0), (5, 1, 5.0), (4, 6, 0.5), (6, 2, 4.0)]:
    CHAIN_A[i][j] = CHAIN_A[j][i] = w
for i in range(7):
    for j in range(7):
        CHAIN_A[i][j] += 0.01
        if i == j:
            CHAIN_A[i][j] += 1.0  # self-loops, as eq. (2) has them


def test_label_propagation_matches_iterated_propagation():
    h = row_normalise(CHAIN_A)
    y_l = torch.eye(3, dtype=torch.float64)
    phi = label_propagation(h, y_l)
    expected = iterative_lp(h, y_l)
    assert phi.shape == (7, 3)
    assert torch.equal(phi[:3], y_l)  # labeled rows clamped
    assert torch.allclose(phi, expected, atol=1e-10)
    assert torch.allclose(phi.sum(1), torch.ones(7, dtype=torch.float64), atol=1e-12)
    # the structure shows: node 3 is class 0's, node 5 class 1's, node 6 class 2's
    assert phi[3].argmax() == 0 and phi[5].argmax() == 1 and phi[6].argmax() == 2


@pytest.mark.parametrize("kind", ["dot", "neg_sq_euclidean"])
def test_label_propagation_on_smoothed_embedding_graph_matches_iteration(kind):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 3, generator=g, dtype=torch.float64)
    h = smooth(transition_matrix(z, kind), 1e-2)
    y_l = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).double()
    assert torch.allclose(label_propagation(h, y_l), iterative_lp(h, y_l), atol=1e-10)


def test_label_propagation_solves_and_never_inverts(monkeypatch):
    calls = []
    solve = torch.linalg.solve

    def counting_solve(*args, **kwargs):
        calls.append(1)
        return solve(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("explicit inverse")

    monkeypatch.setattr(torch.linalg, "solve", counting_solve)
    monkeypatch.setattr(torch.linalg, "inv", forbidden)
    monkeypatch.setattr(torch, "inverse", forbidden)
    label_propagation(row_normalise(CHAIN_A), torch.eye(3, dtype=torch.float64))
    assert calls == [1]


def test_label_propagation_without_unlabeled_nodes_is_the_labels():
    y_l = F.one_hot(torch.tensor([1, 0]), 2).double()
    assert torch.equal(label_propagation(row_normalise([[2, 1], [1, 2]]), y_l), y_l)


def test_smoothing_keeps_rows_stochastic_and_mixes_in_uniform():
    h = row_normalise([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    s = smooth(h, 0.3)
    assert torch.allclose(s, 0.1 + 0.7 * h)
    assert torch.allclose(s.sum(1), torch.ones(3, dtype=torch.float64))


def test_transition_matrix_is_the_row_normalised_exponential():
    z = t64([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # dot: rho = Z Z^T = [[1, 0, 1], [0, 4, 2], [1, 2, 2]]
    expected = row_normalise([[math.e, 1, math.e], [1, math.e ** 4, math.e ** 2], [math.e, math.e ** 2, math.e ** 2]])
    assert torch.allclose(transition_matrix(z, "dot"), expected, atol=1e-12)
    # -||z_i - z_j||^2 = [[0, -5, -1], [-5, 0, -2], [-1, -2, 0]]
    e = math.exp
    expected = row_normalise([[1, e(-5), e(-1)], [e(-5), 1, e(-2)], [e(-1), e(-2), 1]])
    assert torch.allclose(transition_matrix(z, "neg_sq_euclidean"), expected, atol=1e-12)


# ------------------------------------------------------------------ T (eq. 6) and M
# Two labeled nodes (classes 0, 1) and one unlabeled node whose transitions are 0.2 to node 0,
# 0.6 to node 1, 0.2 to itself: LP gives phi_2 = (0.2, 0.6) / (1 - 0.2) = (1/4, 3/4).
TINY_H = [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.6, 0.2]]
TINY_PHI = [[1, 0], [0, 1], [1 / 4, 3 / 4]]
# m = (5/4, 7/4); T_ij = sum_c phi_ic phi_jc / m_c
TINY_T = [[4 / 5, 0, 1 / 5],
          [0, 4 / 7, 3 / 7],
          [1 / 5, 3 / 7, 1 / 20 + 9 / 28]]  # 1/16 / (5/4) + 9/16 / (7/4)
TINY_M = [[1, 0, 1 / 4],
          [0, 1, 3 / 4],
          [1 / 4, 3 / 4, 1 / 16 + 9 / 16]]


def test_target_and_agreement_match_hand_computation():
    phi = label_propagation(t64(TINY_H), torch.eye(2, dtype=torch.float64))
    assert torch.allclose(phi, t64(TINY_PHI), atol=1e-12)
    target, agreement = compact_target(phi), label_agreement(phi)
    # T uses m_c + 1e-5 (reference code): relative deviation below 1e-5
    assert torch.allclose(target, t64(TINY_T), rtol=1e-5, atol=0)
    assert torch.allclose(agreement, t64(TINY_M), atol=1e-12)
    assert torch.allclose(target.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_target_with_a_class_absent_is_finite():
    phi = t64([[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0]])  # class 2 has no mass
    target = compact_target(phi)
    assert torch.isfinite(target).all()
    assert target[0].tolist() == pytest.approx([1 / 2.5, 1 / 2.5, 0.5 / 2.5], rel=1e-4)


# ------------------------------------------------------------------ the S-step loss (eqs. 7-9)
def direct_chain_loss(h, m, t, s, eps):
    """-1/N sum_ij T_ij log(eps + H^(s)_ij), H^(s)_ij summed over explicit paths
    i -> k1 -> ... -> k_{s-1} -> j, every step but the last weighted by M."""
    n = len(h)

    def walk(i, j, steps_left):
        if steps_left == 1:
            return h[i][j]
        return sum(h[i][k] * m[i][k] * walk(k, j, steps_left - 1) for k in range(n))

    return -sum(t[i][j] * math.log(eps + walk(i, j, s)) for i in range(n) for j in range(n)) / n


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_markov_chain_losses_match_direct_float64_evaluation(steps):
    g = torch.Generator().manual_seed(steps)
    h = torch.softmax(torch.randn(5, 5, generator=g, dtype=torch.float64) * 2, 1)
    phi = torch.cat([torch.eye(3, dtype=torch.float64)[[0, 1]],
                     torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), 1)])
    m = phi @ phi.T
    t = compact_target(phi)
    eps = 1e-6
    losses = markov_chain_losses(h, m, t, steps, eps)
    hl, ml, tl = h.tolist(), m.tolist(), t.tolist()
    expected = [direct_chain_loss(hl, ml, tl, s, eps) for s in range(1, steps + 1)]
    assert losses.shape == (steps,)
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)
    # and with explicit matrix powers: H^(s) = (H o M)^(s-1) H
    for s in range(1, steps + 1):
        h_s = torch.linalg.matrix_power(h * m, s - 1) @ h
        assert losses[s - 1].item() == pytest.approx(-(t * torch.log(eps + h_s)).sum().item() / 5, rel=1e-12)


def test_cclp_loss_is_the_mean_over_steps_of_its_pieces():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=g)
    y = torch.tensor([0, 1, 1])
    result = cclp(z[:3], y, z[3:], 2, steps=3, smoothing=1e-3, eps=1e-6)
    assert result.loss.dtype == torch.float32  # returned in the embeddings' dtype
    h = smooth(transition_matrix(z.double()), 1e-3)
    assert torch.allclose(result.h, h)
    phi = label_propagation(h, F.one_hot(y, 2).double())
    assert torch.allclose(result.phi, phi)
    hl, ml, tl = h.tolist(), label_agreement(phi).tolist(), compact_target(phi).tolist()
    expected = sum(direct_chain_loss(hl, ml, tl, s, 1e-6) for s in (1, 2, 3)) / 3
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)


def test_one_step_loss_on_compact_clusters_is_the_entropy_of_t():
    # one compact cluster per class, far apart: H ~ T, so the 1-step loss (1/N normalisation)
    # is the mean row entropy of T = log(cluster size) = log 3
    s = 10.0
    z_l = t64([[s, 0], [0, s]])
    z_u = t64([[s, 0], [s, 0], [0, s], [0, s]])
    result = cclp(z_l, torch.tensor([0, 1]), z_u, 2, steps=1)
    assert result.phi[2:].argmax(1).tolist() == [0, 0, 1, 1]
    assert result.loss.item() == pytest.approx(math.log(3), abs=1e-3)


# ------------------------------------------------------------------ numerics
def clustered(norm, kind_seed=0, n_l=12, n_u=18, classes=3, dim=8, spread=0.01):
    g = torch.Generator().manual_seed(kind_seed)
    centers = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    y_l = torch.arange(n_l) % classes
    y_u = torch.randint(0, classes, (n_u,), generator=g)
    z = F.normalize(centers[torch.cat([y_l, y_u])] + spread * torch.randn(n_l + n_u, dim, generator=g), dim=1)
    return (z * norm).requires_grad_(), y_l


@pytest.mark.parametrize("kind", ["dot", "neg_sq_euclidean"])
@pytest.mark.parametrize("norm", [30.0, 100.0])
def test_loss_and_gradients_finite_for_large_norms(norm, kind):
    z, y_l = clustered(norm)
    result = cclp(z[:12], y_l, z[12:], 3, kind=kind)
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0  # not saturated to a constant: the test has teeth
    # random directions at these norms: every node only sees itself; still finite
    z = (F.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(1)), dim=1) * norm).requires_grad_()
    result = cclp(z[:12], y_l, z[12:], 3, kind=kind)
    result.loss.backward()
    assert torch.isfinite(result.loss) and torch.isfinite(z.grad).all()


def test_method_gradients_finite_for_large_norms():
    model = tiny_model(scale=30.0)
    method = CompactClustering()
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    terms = method.loss_terms(Batch(x[:4], torch.tensor([0, 1, 2, 0]), x[4:]), model, ctx())
    torch.stack(list(terms.values())).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.backbone[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ the method
class Scaled(nn.Sequential):
    embedding_dim = 5


def tiny_model(scale=1.0, seed=0):
    torch.manual_seed(seed)
    backbone = Scaled(nn.Linear(4, 5), nn.Tanh())
    with torch.no_grad():
        backbone[0].weight.mul_(scale)
    return Classifier(backbone, 3)


def ctx(num_classes=3):
    return TrainContext(step=0, steps=1, num_classes=num_classes, device=torch.device("cpu"), data=None,
                        generator=torch.Generator())


def test_defaults_are_the_papers():
    method = CompactClustering()
    assert (method.weight, method.steps, method.similarity) == (1.0, 3, "dot")
    assert (method.smoothing, method.log_epsilon) == (1e-5, 1e-6)
    assert EntropyMinimisation().weight == 1.0


@pytest.mark.parametrize("given, message", [
    ({"step": 2}, r"unknown key methods\.cclp\.step .*did you mean 'steps'"),
    ({"steps": 0}, r"methods\.cclp\.steps must be >= 1"),
    ({"steps": 2.5}, r"methods\.cclp\.steps must be an int"),
    ({"weight": "big"}, r"methods\.cclp\.weight must be a number"),
    ({"weight": -1.0}, r"methods\.cclp\.weight must be >= 0"),
    ({"smoothing": 0.0}, r"methods\.cclp\.smoothing must be > 0"),
    ({"log_epsilon": 0.0}, r"methods\.cclp\.log_epsilon must be > 0"),
    ({"similarity": "cosine"}, r"methods\.cclp\.similarity must be one of 'dot', 'neg_sq_euclidean'"),
])
def test_cclp_hyperparameters_are_validated(given, message):
    with pytest.raises(UserError, match=message):
        CompactClustering(**given)


def test_entmin_hyperparameters_are_validated():
    with pytest.raises(UserError, match=r"methods\.entmin\.weight must be >= 0"):
        EntropyMinimisation(weight=-0.5)
    with pytest.raises(UserError, match=r"unknown key methods\.entmin\.lambda"):
        EntropyMinimisation(**{"lambda": 1.0})
    with pytest.raises(UserError, match=r"methods\.entmin\.weight must be a number"):
        EntropyMinimisation(weight="1")


def test_cclp_without_unlabeled_data_is_the_supervised_loss():
    model = tiny_model()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    terms = CompactClustering().loss_terms(Batch(x, y, None), model, ctx())
    assert list(terms) == ["classification"]
    assert terms["classification"].item() == pytest.approx(F.cross_entropy(model(x), y).item())


def test_cclp_term_scales_with_weight_and_head_learns_from_supervision_only():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    x_l, y_l, x_u = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(8, 4, generator=g)
    batch = Batch(x_l, y_l, x_u)
    terms = {w: CompactClustering(weight=w).loss_terms(batch, model, ctx()) for w in (0.0, 1.0, 2.5)}
    assert set(terms[1.0]) == {"classification", "cclp"}
    one = terms[1.0]["cclp"].item()
    assert one > 0
    assert terms[2.5]["cclp"].item() == pytest.approx(2.5 * one, rel=1e-6)
    assert terms[0.0]["cclp"].item() == 0.0
    assert terms[2.5]["classification"].item() == pytest.approx(F.cross_entropy(model(x_l), y_l).item(), rel=1e-6)
    # the same value as the module function on the embeddings
    z = model.embed(torch.cat([x_l, x_u]))
    assert one == pytest.approx(cclp(z[:6], y_l, z[6:], 3).loss.item(), rel=1e-6)
    # the classifier g gets no gradient from L_CCLP, the feature extractor does
    model.zero_grad()
    terms[1.0]["cclp"].backward()
    assert model.head.weight.grad is None or model.head.weight.grad.abs().sum() == 0
    assert model.backbone[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ entropy minimisation
class Identity(nn.Module):
    """A 'network' whose logits are its input: fixed logits for the loss terms."""

    def forward(self, x):
        return x


def test_entropy_term_matches_hand_computation():
    logits = t64([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]])
    # p = (1/2, 1/2), (3/4, 1/4), (1/2, 1/2)
    h_half = math.log(2)
    h_quarter = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = (2 * h_half + h_quarter) / 3
    assert mean_entropy(logits).item() == pytest.approx(expected, rel=1e-12)
    x_l, y_l = t64([[2.0, 0.0]]), torch.tensor([0])
    terms = EntropyMinimisation(weight=0.3).loss_terms(Batch(x_l, y_l, logits), Identity(), ctx(2))
    assert set(terms) == {"classification", "entropy"}
    assert terms["entropy"].item() == pytest.approx(0.3 * expected, rel=1e-12)
    assert terms["classification"].item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-12)
    # three classes, uniform: log 3
    assert mean_entropy(torch.zeros(4, 3)).item() == pytest.approx(math.log(3), rel=1e-6)


@pytest.mark.parametrize("scale", [100.0, 1e4])
def test_entropy_is_zero_for_confident_one_hot_predictions(scale):
    logits = (scale * F.one_hot(torch.tensor([0, 2, 1]), 3).double()).requires_grad_()
    value = mean_entropy(logits)
    assert 0 <= value.item() < 1e-30
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_entmin_without_unlabeled_data_is_the_supervised_loss():
    terms = EntropyMinimisation().loss_terms(Batch(t64([[1.0, 0.0]]), torch.tensor([1]), None), Identity(), ctx(2))
    assert list(terms) == ["classification"]


# ------------------------------------------------------------------ end to end
SMOKE_GRID = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "cclp"
steps = 10
eval_every = 5
labeled_per_class = 2
n_labeled = 50
n_unlabeled = 100
unlabeled_batch = 20
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[axes]
method = ["cclp", "entmin"]
"""


def test_registry_lists_both_methods_and_a_short_run_finishes():
    registry = load_registry()
    for name, cls in [("cclp", CompactClustering), ("entmin", EntropyMinimisation)]:
        assert registry.method(name) is cls
        assert registry.providers["methods"][name].distribution == "ssl-bench"
    runs = expand(parse_grid(tomllib.loads(SMOKE_GRID)), registry)
    assert [r.config["method"] for r in runs] == ["cclp", "entmin"]
    assert runs[0].config["methods"]["cclp"] == {"weight": 1.0, "steps": 3, "smoothing": 1e-5,
                                                 "log_epsilon": 1e-6, "similarity": "dot"}
    dataset = load_digits(None)
    for run, term in zip(runs, ["cclp", "entropy"]):
        outcome = train_run(run.config, registry, dataset, torch.device("cpu"))
        assert outcome.status == "ok", outcome.error
        assert outcome.steps_done == 10 and [c["step"] for c in outcome.curves] == [5, 10]
        assert all(math.isfinite(c["loss_terms"][term]) for c in outcome.curves)
        assert 0 <= outcome.metrics["test_error"] <= 100
