"""Hand-computed checks of the association losses (LbA eqs. 1-5) and of the built-in methods.

The expected numbers are computed here in plain Python floats (math.exp / math.log), not with
the torch code under test, on embeddings small enough to follow on paper.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssl_bench
from ssl_bench import Batch, Classifier, TrainContext, UserError
from ssl_bench_plugins.methods.association import Association, associate, walker_target
from ssl_bench_plugins.methods.lba import LearningByAssociation
from ssl_bench_plugins.methods.supervised import Supervised

EPS = 1e-8
E = math.e
E2 = math.exp(2.0)

# --------------------------------------------------------------------------- the hand case
# A: 3 labeled embeddings (classes 0, 1, 0), B: 2 unlabeled embeddings, D = 2.
A = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
LABELS = [0, 1, 0]
B = [[2.0, 0.0], [0.0, 1.0]]

# eq. (1): M = A B^T
M = [[2.0, 0.0],
     [0.0, 2.0],
     [2.0, 1.0]]
# eq. (2): each row of M softmax-normalised over the columns (B)
P_AB = [[E2 / (E2 + 1), 1 / (E2 + 1)],
        [1 / (1 + E2), E2 / (1 + E2)],
        [E / (E + 1), 1 / (E + 1)]]
# P^ba: rows of M^T = [[2, 0, 2], [0, 2, 1]] normalised over A
P_BA = [[E2 / (2 * E2 + 1), 1 / (2 * E2 + 1), E2 / (2 * E2 + 1)],
        [1 / (1 + E2 + E), E2 / (1 + E2 + E), E / (1 + E2 + E)]]
# eq. (3): P^aba = P^ab P^ba (3 x 3)
P_ABA = [[sum(P_AB[i][k] * P_BA[k][j] for k in range(2)) for j in range(3)] for i in range(3)]
# eq. (4): T for labels [0, 1, 0]
T = [[0.5, 0.0, 0.5],
     [0.0, 1.0, 0.0],
     [0.5, 0.0, 0.5]]
WALKER = -sum(T[i][j] * math.log(EPS + P_ABA[i][j]) for i in range(3) for j in range(3)) / 3
# eq. (5): P^visit_j = mean_i P^ab_ij, V_j = 1/|B|
P_VISIT = [sum(P_AB[i][j] for i in range(3)) / 3 for j in range(2)]
VISIT = -sum(0.5 * math.log(EPS + p) for p in P_VISIT)
# P(correct walk) = 1/|A| sum_{i ~ j} P^aba_ij
CORRECT_WALK = sum(P_ABA[i][j] for i in range(3) for j in range(3) if LABELS[i] == LABELS[j]) / 3


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def hand_association() -> Association:
    return associate(t64(A), t64(B), torch.tensor(LABELS))


def test_hand_constants_are_what_the_formulas_say():
    # guards the hand computation itself with numbers written out once
    assert P_AB[0][0] == pytest.approx(0.8807970779778823, abs=1e-12)
    assert P_AB[2][0] == pytest.approx(0.7310585786300049, abs=1e-12)
    assert P_BA[0][0] == pytest.approx(0.4683105308334812, abs=1e-12)
    assert P_BA[1][1] == pytest.approx(0.6652409557748219, abs=1e-12)
    assert [sum(r) for r in P_ABA] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert P_ABA[0] == pytest.approx([0.42321845, 0.13512265, 0.44165890], abs=1e-8)
    assert P_ABA[1] == pytest.approx([0.13512265, 0.59349724, 0.27138011], abs=1e-8)
    assert P_ABA[2] == pytest.approx([0.36657538, 0.22524456, 0.40818005], abs=1e-8)
    assert WALKER == pytest.approx(0.770021248681308, abs=1e-12)
    assert VISIT == pytest.approx(0.7051541967050869, abs=1e-12)
    assert CORRECT_WALK == pytest.approx(0.7443766768009885, abs=1e-12)


def test_transition_matrices_match_hand_computation():
    assoc = hand_association()
    assert torch.allclose(t64(A) @ t64(B).T, t64(M))
    assert assoc.p_ab.shape == (3, 2) and assoc.p_ba.shape == (2, 3) and assoc.p_aba.shape == (3, 3)
    assert torch.allclose(assoc.p_ab, t64(P_AB), atol=1e-12)
    assert torch.allclose(assoc.p_ba, t64(P_BA), atol=1e-12)
    assert torch.allclose(assoc.p_aba, t64(P_ABA), atol=1e-12)
    # rows (not columns) are normalised
    assert torch.allclose(assoc.p_ab.sum(1), torch.ones(3, dtype=torch.float64))
    assert not torch.allclose(assoc.p_ab.sum(0), torch.full((2,), 1.5, dtype=torch.float64))
    assert torch.allclose(assoc.p_ba.sum(1), torch.ones(2, dtype=torch.float64))


def test_walker_and_visit_loss_match_hand_computation():
    assoc = hand_association()
    assert assoc.walker_loss.ndim == 0 and assoc.visit_loss.ndim == 0
    assert assoc.walker_loss.item() == pytest.approx(WALKER, abs=1e-10)
    assert assoc.visit_loss.item() == pytest.approx(VISIT, abs=1e-10)


def test_log_epsilon_is_used():
    # P^aba has an exact zero when one transition underflows; eps keeps the loss finite:
    # A_0 only reaches B_0, B_0 only reaches A_0, and A_1 (other class) sits far away.
    a = t64([[100.0, 0.0], [0.0, 100.0]])
    b = t64([[100.0, 0.0]])
    assoc = associate(a, b, torch.tensor([0, 1]), eps=1e-3)
    # P^ab = [[1], [1]], P^ba = [[1, 0]] (exp(-10000) underflows), P^aba = [[1, 0], [1, 0]]
    # walker: row 0 -> -log(1e-3 + 1); row 1 -> -log(1e-3 + 0)
    expected = (-math.log(1.001) - math.log(1e-3)) / 2
    assert assoc.walker_loss.item() == pytest.approx(expected, rel=1e-9)
    assert assoc.visit_loss.item() == pytest.approx(-math.log(1.001), rel=1e-9)


def test_correct_walk_probability_matches_hand_computation():
    assoc = hand_association()
    assert assoc.correct_walk_probability(torch.tensor(LABELS)).item() == pytest.approx(CORRECT_WALK, abs=1e-12)


def test_correct_walk_probability_extremes():
    s = 10.0
    a = t64([[s, 0], [s, 0], [0, s]])
    b = t64([[s, 0], [0, s]])
    labels = torch.tensor([0, 0, 1])
    # separated: every round trip returns to its class
    assert associate(a, b, labels).correct_walk_probability(labels).item() == pytest.approx(1.0, abs=1e-12)
    # all embeddings equal: P^aba is uniform 1/3, so row i ends in its class with #class(i)/3
    same = associate(torch.ones(3, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64), labels)
    assert same.correct_walk_probability(labels).item() == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3, abs=1e-12)


# --------------------------------------------------------------------------- walker target
def test_walker_target_is_built_in_the_embeddings_dtype():
    labels = torch.tensor([0, 0, 0, 1])
    exact = walker_target(labels, torch.float64)
    assert exact.dtype == torch.float64 and exact[0, 1].item() == 1 / 3  # exactly the float64 third
    assert walker_target(labels).to(torch.float64)[0, 1].item() != 1 / 3  # the float32 one is not


def test_walker_target_two_classes():
    target = walker_target(torch.tensor([0, 0, 1]))
    assert target.dtype == torch.float32
    assert torch.equal(target, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))


def test_walker_target_unsorted_labels_and_row_sums():
    labels = torch.tensor([2, 0, 2, 2, 0])
    target = walker_target(labels)
    third = 1 / 3
    expected = torch.tensor([[third, 0, third, third, 0],
                             [0, 0.5, 0, 0, 0.5],
                             [third, 0, third, third, 0],
                             [third, 0, third, third, 0],
                             [0, 0.5, 0, 0, 0.5]])
    assert torch.allclose(target, expected, atol=1e-7)
    assert torch.allclose(target.sum(1), torch.ones(5))
    # zero across classes, positive within
    assert torch.equal(target > 0, labels[:, None] == labels[None, :])


# --------------------------------------------------------------------------- minima
def test_walker_and_visit_losses_reach_their_minimum_on_separated_embeddings():
    # two labeled and two unlabeled samples per class, one direction per class, large norm:
    # P^ab_0 = [.5, 0, .5, 0], P^ba_0 = [.5, .5, 0, 0], so P^aba = T exactly (up to exp(-100))
    s = 10.0
    a = t64([[s, 0], [s, 0], [0, s], [0, s]])
    b = t64([[s, 0], [0, s], [s, 0], [0, s]])
    labels = torch.tensor([0, 0, 1, 1])
    assoc = associate(a, b, labels)
    assert torch.allclose(assoc.p_aba, walker_target(labels).double(), atol=1e-12)
    # minimum of H(T, P^aba) is the mean entropy of T's rows: log(#class members) = log 2
    assert assoc.walker_loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # visits are uniform (each B_j gets 1/4): H(V, P^visit) = log |B| = log 4
    assert assoc.visit_loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_walker_minimum_with_unequal_class_sizes():
    s = 10.0
    a = t64([[s, 0], [s, 0], [0, s]])
    b = t64([[s, 0], [0, s]])
    assoc = associate(a, b, torch.tensor([0, 0, 1]))
    # mean over rows of log(#class): (log 2 + log 2 + log 1) / 3
    assert assoc.walker_loss.item() == pytest.approx(2 * math.log(2) / 3, abs=1e-6)
    # visits are 2/3, 1/3: not uniform, so the visit loss is above log 2
    expected_visit = -(math.log(2 / 3) + math.log(1 / 3)) / 2
    assert assoc.visit_loss.item() == pytest.approx(expected_visit, abs=1e-6)
    assert expected_visit > math.log(2) + 0.05


@pytest.mark.parametrize("seed", range(5))
def test_losses_never_below_their_minimum(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    assoc = associate(a, b, labels)
    mean_entropy_t = (3 * math.log(3) + 2 * math.log(2) + 0.0) / 6
    assert assoc.walker_loss.item() > mean_entropy_t
    assert assoc.visit_loss.item() >= math.log(5) - 1e-9


def test_losses_are_differentiable():
    a = t64(A).requires_grad_()
    b = t64(B).requires_grad_()
    assoc = associate(a, b, torch.tensor(LABELS))
    (assoc.walker_loss + assoc.visit_loss).backward()
    assert a.grad is not None and b.grad is not None
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# --------------------------------------------------------------------------- methods
class IdentityBackbone(nn.Module):
    """The images are the embeddings: x (N x 2) -> x."""

    embedding_dim = 2

    def forward(self, x):
        return x


W = [[1.0, -1.0], [0.5, 2.0]]
BIAS = [0.1, -0.2]


def fixed_model() -> Classifier:
    model = Classifier(IdentityBackbone(), num_classes=2).double()
    with torch.no_grad():
        model.head.weight.copy_(t64(W))
        model.head.bias.copy_(t64(BIAS))
    return model


def hand_cross_entropy(xs, ys) -> float:
    total = 0.0
    for x, y in zip(xs, ys):
        logits = [sum(W[c][d] * x[d] for d in range(2)) + BIAS[c] for c in range(2)]
        total += -logits[y] + math.log(sum(math.exp(z) for z in logits))
    return total / len(xs)


# logits of A: [1.1, 0.3], [-1.9, 3.8], [0.1, 2.3]
CLASSIFICATION = hand_cross_entropy(A, LABELS)


def ctx() -> TrainContext:
    return TrainContext(step=0, steps=1, num_classes=2, device=torch.device("cpu"), data=None,
                        generator=torch.Generator().manual_seed(0))


def batch(with_unlabeled: bool = True) -> Batch:
    return Batch(t64(A), torch.tensor(LABELS), t64(B) if with_unlabeled else None)


def test_hand_cross_entropy_constant():
    # -log softmax: row 0 -> log(1 + e^-0.8), row 1 -> log(1 + e^-5.7), row 2 -> log(1 + e^2.2)
    expected = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-5.7)) + math.log(1 + math.exp(2.2))) / 3
    assert CLASSIFICATION == pytest.approx(expected, abs=1e-12)
    assert CLASSIFICATION == pytest.approx(0.8931747886289471, abs=1e-12)


def test_lba_loss_terms_match_hand_computation():
    terms = LearningByAssociation().loss_terms(batch(), fixed_model(), ctx())
    assert set(terms) == {"classification", "walker", "visit"}
    assert terms["classification"].item() == pytest.approx(CLASSIFICATION, abs=1e-10)
    assert terms["walker"].item() == pytest.approx(WALKER, abs=1e-10)
    assert terms["visit"].item() == pytest.approx(VISIT, abs=1e-10)


def test_lba_weights_scale_their_terms_only():
    model = fixed_model()
    full = LearningByAssociation(visit_weight=1.0).loss_terms(batch(), model, ctx())
    half = LearningByAssociation(visit_weight=0.5).loss_terms(batch(), model, ctx())
    assert half["visit"].item() == pytest.approx(0.5 * full["visit"].item(), abs=1e-12)
    assert half["visit"].item() == pytest.approx(0.5 * VISIT, abs=1e-10)
    assert half["walker"].item() == pytest.approx(full["walker"].item(), abs=1e-12)
    assert half["classification"].item() == pytest.approx(full["classification"].item(), abs=1e-12)

    double_walker = LearningByAssociation(walker_weight=2.0, visit_weight=0.0).loss_terms(batch(), model, ctx())
    assert double_walker["walker"].item() == pytest.approx(2 * WALKER, abs=1e-10)
    assert double_walker["visit"].item() == 0.0
    assert double_walker["classification"].item() == pytest.approx(CLASSIFICATION, abs=1e-10)


def test_lba_log_epsilon_reaches_the_losses():
    terms = LearningByAssociation(log_epsilon=0.5).loss_terms(batch(), fixed_model(), ctx())
    walker = -sum(T[i][j] * math.log(0.5 + P_ABA[i][j]) for i in range(3) for j in range(3)) / 3
    visit = -sum(0.5 * math.log(0.5 + p) for p in P_VISIT)
    assert terms["walker"].item() == pytest.approx(walker, abs=1e-10)
    assert terms["visit"].item() == pytest.approx(visit, abs=1e-10)


def test_lba_without_unlabeled_data_is_classification_only():
    terms = LearningByAssociation(visit_weight=0.5).loss_terms(batch(with_unlabeled=False), fixed_model(), ctx())
    assert list(terms) == ["classification"]
    assert terms["classification"].item() == pytest.approx(CLASSIFICATION, abs=1e-10)


def test_lba_classification_equals_torch_cross_entropy_of_the_head():
    model = fixed_model()
    terms = LearningByAssociation().loss_terms(batch(), model, ctx())
    by_torch = F.cross_entropy(t64(A) @ t64(W).T + t64(BIAS), torch.tensor(LABELS))
    assert terms["classification"].item() == pytest.approx(by_torch.item(), abs=1e-12)


def test_lba_loss_terms_backpropagate_into_head_and_backbone():
    class Scale(nn.Module):
        embedding_dim = 2

        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x):
            return self.s * x

    model = Classifier(Scale(), 2).double()
    terms = LearningByAssociation().loss_terms(batch(), model, ctx())
    sum(terms.values()).backward()
    assert model.backbone.s.grad is not None and model.backbone.s.grad.item() != 0.0
    assert model.head.weight.grad is not None


def test_supervised_loss_terms():
    assert Supervised.uses_unlabeled is False
    assert LearningByAssociation.uses_unlabeled is True
    for with_unlabeled in (True, False):
        terms = Supervised().loss_terms(batch(with_unlabeled), fixed_model(), ctx())
        assert list(terms) == ["classification"]
        assert terms["classification"].item() == pytest.approx(CLASSIFICATION, abs=1e-10)


# --------------------------------------------------------------------------- hyperparameters
def test_lba_defaults():
    method = LearningByAssociation()
    assert method.hparams == {"walker_weight": 1.0, "visit_weight": 1.0, "log_epsilon": 1e-8}
    assert [p.name for p in LearningByAssociation.params()] == ["walker_weight", "visit_weight", "log_epsilon"]
    assert Supervised().hparams == {}


def test_lba_int_is_accepted_for_float():
    method = LearningByAssociation(visit_weight=1, walker_weight=0)
    assert method.visit_weight == 1.0 and type(method.visit_weight) is float
    assert method.walker_weight == 0.0 and type(method.walker_weight) is float
    assert method.hparams["visit_weight"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"visit_weight": "x"}, "methods.lba.visit_weight must be a number, got 'x'"),
    ({"visit_weight": True}, "methods.lba.visit_weight must be a number, got True"),
    ({"visit_weight": float("nan")}, "methods.lba.visit_weight must be a number, got nan"),
    ({"visit_weight": -1}, "methods.lba.visit_weight must be >= 0, got -1.0"),
    ({"walker_weight": -0.5}, "methods.lba.walker_weight must be >= 0, got -0.5"),
    ({"log_epsilon": 0}, "methods.lba.log_epsilon must be > 0, got 0.0"),
    ({"visit_wieght": 1}, "unknown key methods.lba.visit_wieght (did you mean 'visit_weight'?); "
                          "known keys: log_epsilon, visit_weight, walker_weight"),
])
def test_lba_hyperparameter_validation(kwargs, message):
    with pytest.raises(UserError) as info:
        LearningByAssociation(**kwargs)
    assert str(info.value) == message


def test_supervised_rejects_any_hyperparameter():
    with pytest.raises(UserError, match=r"unknown key methods\.supervised\.visit_weight; known keys: none"):
        Supervised(visit_weight=1.0)


def test_user_error_is_public():
    assert ssl_bench.UserError is UserError
