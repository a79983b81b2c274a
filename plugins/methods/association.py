"""The association computation of Learning by Association (Haeusser et al., CVPR 2017, §3),
written once for every method built on it (LbA, associative domain adaptation, clustering).

Notation of the paper: A = embeddings of the labeled batch, B = of the unlabeled batch.

- eq. (1)  M_ij = A_i . B_j                                   (dot-product similarity)
- eq. (2)  P^ab_ij = exp(M_ij) / sum_j' exp(M_ij')          (each ROW normalised over j; the
           text says "softmax over columns", the formula and reference code normalise rows)
- eq. (3)  P^aba = P^ab P^ba, with P^ba the same for M^T     (round trip A -> B -> A)
- eq. (4)  L_walker = H(T, P^aba), T_ij = 1/#class(A_i) if class(A_i) = class(A_j) else 0
- eq. (5)  L_visit = H(V, P^visit), P^visit_j = mean_i P^ab_ij, V_j = 1/|B|

Cross-entropies use log(eps + p) and average over rows, as the reference code does.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Association:
    p_ab: torch.Tensor  # |A| x |B|
    p_ba: torch.Tensor  # |B| x |A|
    p_aba: torch.Tensor  # |A| x |A|
    walker_loss: torch.Tensor
    visit_loss: torch.Tensor

    def correct_walk_probability(self, labels_a: torch.Tensor) -> torch.Tensor:
        """Diagnostic: mean over i of the probability that a round trip from A_i ends in its class."""
        same = labels_a[:, None] == labels_a[None, :]
        return (self.p_aba * same).sum(1).mean()


def walker_target(labels_a: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """T of eq. (4): uniform over the labeled samples of the start sample's class, built in
    ``dtype`` (the embeddings': a float32 target cast to float64 would be off by ~1e-8)."""
    same = (labels_a[:, None] == labels_a[None, :]).to(dtype)
    return same / same.sum(1, keepdim=True)


def associate(a: torch.Tensor, b: torch.Tensor, labels_a: torch.Tensor, eps: float = 1e-8) -> Association:
    """Association of labeled embeddings ``a`` (N x D, labels ``labels_a``) with unlabeled
    embeddings ``b`` (M x D): transition matrices, walker loss and visit loss (eqs. 1-5)."""
    match = a @ b.T
    p_ab = torch.softmax(match, dim=1)
    p_ba = torch.softmax(match.T, dim=1)
    p_aba = p_ab @ p_ba
    target = walker_target(labels_a, p_aba.dtype)
    walker = -(target * torch.log(eps + p_aba)).sum(1).mean()
    p_visit = p_ab.mean(0, keepdim=True)
    visit = -(torch.log(eps + p_visit)).mean()  # V_j = 1/|B|: H(V, P^visit) = -mean_j log P^visit_j
    return Association(p_ab, p_ba, p_aba, walker, visit)
