"""Compact Clustering via Label Propagation (Kamnitsas et al., "Semi-supervised learning via
compact latent space clustering", ICML 2018): Algorithm 1.

Each step, with a class-balanced labeled batch (X_L, y_L) of N_L and an unlabeled batch X_U of
N_U, N = N_L + N_U:

1. Z = z([X_L; X_U])                              one forward pass of the concatenated batch
2. A_ij = exp(rho(z_i, z_j)), H = rows of A normalised  (eqs. 2-3: a row softmax of rho)
3. H <- e/N + (1 - e) H                             smoothing, so that I - H_UU is invertible
4. Phi_U = (I - H_UU)^-1 H_UL Y_L, Phi = [Y_L; Phi_U]   label propagation (eq. 5)
5. T_ij = sum_c phi_ic phi_jc / m_c, m_c = sum_i phi_ic  the ideal transition matrix (eq. 6)
6. M = Phi Phi^T                                   label agreement, in [0, 1]
7. H^(s) = (H o M)^(s-1) H, s = 1..S                (eq. 8)
8. L_CCLP = 1/S sum_s CE(T, H^(s))                  (eqs. 7, 9)
9. minimise L_sup + w L_CCLP; L_sup = softmax cross-entropy of the linear head g on Z_L.
   L_CCLP depends on Z only, so g gets gradients from L_sup only, as Algorithm 1 prescribes.

With no unlabeled data (the "0" column of a protocol grid) only L_sup is active.

Choices where the paper is silent (or where this follows the authors' reference code, which is
what made w = 1 work), all used by the functions below:

- Graph: self-loops are kept (A_ii = exp(rho(z_i, z_i))), as eq. (2) and the reference code
  have them. H is computed as a softmax of rho (max-subtracted), never as exp()/sum: dot
  products exceed 100 in training.
- Similarity ``"neg_sq_euclidean"``: rho = -||z_i - z_j||^2 (no bandwidth; the paper names
  "negative Euclidean distance" as an option and uses the dot product).
- Block notation: eq. (4) labels the upper right block H_UL; eq. (5) needs it N_U x N_L, so
  H_UL here is rows U, columns L (transitions from unlabeled to labeled), the only reading in
  which eq. (5) is the fixed point of Phi <- H Phi with the labeled rows clamped.
- Smoothing e (default 1e-5, the reference code's value) is applied to H before label
  propagation and the smoothed H is also the H of eqs. (7)-(8) (the reference code's default).
- Label propagation is a linear solve (torch.linalg.solve), never an explicit inverse. The
  whole graph computation runs in float64 and the loss is returned in the embeddings' dtype:
  a row sum of I - H_UU is the probability of stepping to a labeled node, which falls to
  e N_L / N when the embeddings separate, so the condition number reaches ~N / (e N_L)
  (2e5 for the paper's batches); in float32 Phi_U was off by 2e-3 at embedding norm 5.
  Phi_U is clamped to [0, 1] (the exact solution lies there) so that rounding cannot make M
  or H^(s) negative (log of a negative number). Needs a device with float64 (not MPS).
- Gradients flow through everything: through H and through Phi (so through T and M), as in
  the reference code ("eq. (5) is differentiable", §3.1).
- m_c gets + 1e-5 (reference code) so a class absent from the labeled batch gives T = 0
  columns, not 0/0.
- log(H^(s) + eps), eps = 1e-6 (reference code).
- Normalisation: each step's cross-entropy is the MEAN over the N rows of the row sums
  -sum_j T_ij log H^(s)_ij, i.e. 1/N where eqs. (7) and (9) write 1/N^2. This is the
  reference code's normalisation, the one the paper's w = 1 was used with; eq. (9) as printed
  is this value divided by N.
- One forward pass of [X_L; X_U] (Algorithm 1's "Z <- z(X)"): with batch norm in the
  backbone, both parts are normalised by the joint batch statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from ssl_bench import Method, hookimpl, hyperparameter

Similarity = Literal["dot", "neg_sq_euclidean"]
MASS_EPSILON = 1e-5  # added to m_c of eq. (6), as the reference code does


def similarity(z: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """rho(z_i, z_j) of eq. (2) for all pairs of rows of ``z`` (N x D): N x N."""
    if kind == "dot":
        return z @ z.T
    if kind == "neg_sq_euclidean":
        sq = (z * z).sum(1)
        # no sqrt, so no infinite gradient at zero distance; clamp the rounding below 0
        return -(sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    raise ValueError(f"unknown similarity {kind!r}; use 'dot' or 'neg_sq_euclidean'")


def transition_matrix(z: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """H of eqs. (2)-(3): A = exp(rho) normalised over each row, as a (max-subtracted) softmax."""
    return torch.softmax(similarity(z, kind), dim=1)


def smooth(h: torch.Tensor, e: float) -> torch.Tensor:
    """H <- e/N + (1 - e) H: every node reaches every other, so I - H_UU is invertible.
    Rows still sum to 1."""
    return e / h.shape[0] + (1.0 - e) * h


def label_propagation(h: torch.Tensor, y_labeled: torch.Tensor) -> torch.Tensor:
    """Phi = [Y_L; Phi_U] with Phi_U = (I - H_UU)^-1 H_UL Y_L (eq. 5), by a linear solve.

    ``h``: N x N transition matrix, the N_L labeled nodes first; ``y_labeled``: N_L x C one-hot.
    Phi_U is clamped to [0, 1], where the exact solution lies."""
    n_l = y_labeled.shape[0]
    y_labeled = y_labeled.to(h.dtype)
    if h.shape[0] == n_l:
        return y_labeled
    h_uu, h_ul = h[n_l:, n_l:], h[n_l:, :n_l]
    eye = torch.eye(h_uu.shape[0], dtype=h.dtype, device=h.device)
    phi_u = torch.linalg.solve(eye - h_uu, h_ul @ y_labeled).clamp(0.0, 1.0)
    return torch.cat([y_labeled, phi_u])


def compact_target(phi: torch.Tensor) -> torch.Tensor:
    """T of eq. (6): T_ij = sum_c phi_ic phi_jc / m_c, m_c = sum_i phi_ic (+ 1e-5)."""
    mass = phi.sum(0, keepdim=True)
    return phi @ (phi / (mass + MASS_EPSILON)).T


def label_agreement(phi: torch.Tensor) -> torch.Tensor:
    """M = Phi Phi^T: the probability that two nodes have the same class, in [0, 1]."""
    return phi @ phi.T


def markov_chain_losses(h: torch.Tensor, agreement: torch.Tensor, target: torch.Tensor, steps: int,
                        eps: float = 1e-6) -> torch.Tensor:
    """The S cross-entropies of eqs. (7)-(8): for s = 1..S, H^(s) = (H o M)^(s-1) H and
    mean_i -sum_j T_ij log(eps + H^(s)_ij). Returns a vector of S values (eq. 9 is its mean)."""
    masked = h * agreement
    h_s, losses = h, []
    for s in range(1, steps + 1):
        if s > 1:
            h_s = masked @ h_s
        losses.append(-(target * torch.log(eps + h_s)).sum(1).mean())
    return torch.stack(losses)


@dataclasses.dataclass
class CCLPResult:
    h: torch.Tensor  # N x N smoothed transition matrix (float64)
    phi: torch.Tensor  # N x C label-propagation posteriors, [Y_L; Phi_U]
    target: torch.Tensor  # T, N x N
    agreement: torch.Tensor  # M, N x N
    step_losses: torch.Tensor  # S cross-entropies, s = 1..S
    loss: torch.Tensor  # L_CCLP (eq. 9), in the embeddings' dtype


def cclp(z_labeled: torch.Tensor, y_labeled: torch.Tensor, z_unlabeled: torch.Tensor, num_classes: int, *,
         steps: int = 3, smoothing: float = 1e-5, eps: float = 1e-6, kind: str = "dot") -> CCLPResult:
    """L_CCLP of Algorithm 1 for labeled embeddings ``z_labeled`` (labels ``y_labeled``, int) and
    unlabeled embeddings ``z_unlabeled``; computed in float64 (see the module docstring)."""
    z = torch.cat([z_labeled, z_unlabeled]).to(torch.float64)
    h = smooth(transition_matrix(z, kind), smoothing)
    phi = label_propagation(h, F.one_hot(y_labeled, num_classes))
    target, agreement = compact_target(phi), label_agreement(phi)
    step_losses = markov_chain_losses(h, agreement, target, steps, eps)
    return CCLPResult(h, phi, target, agreement, step_losses, step_losses.mean().to(z_labeled.dtype))


class CompactClustering(Method):
    """Supervised cross-entropy + w * L_CCLP (Kamnitsas et al. 2018, Algorithm 1, eqs. 2-9)."""

    name = "cclp"
    weight: float = hyperparameter(1.0, ge=0, help="w of Algorithm 1 (L_sup + w L_CCLP); the paper uses 1")
    steps: int = hyperparameter(3, ge=1, help="S of eq. 9: longest Markov chain; the paper uses 3")
    smoothing: float = hyperparameter(1e-5, gt=0, le=1, help="e in H <- e/N + (1-e) H before LP (reference code)")
    log_epsilon: float = hyperparameter(1e-6, gt=0, help="eps in log(eps + H^(s)), as the reference code")
    similarity: Similarity = hyperparameter("dot", help="rho of eq. 2: dot product (the paper) or -||z_i - z_j||^2")

    def loss_terms(self, batch, model, ctx):
        if batch.x_unlabeled is None:
            return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        n_l = batch.x_labeled.shape[0]
        z = model.embed(torch.cat([batch.x_labeled, batch.x_unlabeled]))
        result = cclp(z[:n_l], batch.y_labeled, z[n_l:], ctx.num_classes, steps=self.steps,
                      smoothing=self.smoothing, eps=self.log_epsilon, kind=self.similarity)
        return {
            "classification": F.cross_entropy(model.head(z[:n_l]), batch.y_labeled),
            "cclp": self.weight * result.loss,
        }


@hookimpl
def ssl_bench_methods():
    return [CompactClustering]
