"""MixUp's pieces, shared by the MixUp baseline (``mixup.py``) and MixMatch (``mixmatch.py``):
a Beta sampler that draws from a given torch.Generator, the mixing weights lambda' and the
mixing itself.

MixUp (Zhang et al., ICLR 2018) as MixMatch uses it (Berthelot et al., NeurIPS 2019, eqs. 8-11):
for two examples (x1, p1), (x2, p2) and lambda ~ Beta(alpha, alpha),

    lambda' = max(lambda, 1 - lambda)             (eq. 9)
    x' = lambda' x1 + (1 - lambda') x2             (eq. 10)
    p' = lambda' p1 + (1 - lambda') p2             (eq. 11)

lambda' >= 1/2 keeps x' closer to x1, so that a mixed labeled example stays "labeled" and a
mixed unlabeled one "unlabeled" for the two loss terms.

The Beta sampler. Every random number of a run comes from the run's seeded generator
(``ctx.generator``, on the training device), so a run is reproducible and packs nothing it
cannot. ``torch.distributions.Beta`` and ``torch._standard_gamma`` take no generator, and
Beta has no inverse CDF in torch, so Beta(a, b) is built here from generator-drawn normals and
uniforms:

- Beta(a, b) = G1 / (G1 + G2), G1 ~ Gamma(a, 1), G2 ~ Gamma(b, 1) independent; computed as
  sigmoid(log G1 - log G2), which stays finite when both Gammas are tiny (small alpha);
- Gamma(s, 1) for s >= 1 by Marsaglia & Tsang (ACM TOMS 2000): d = s - 1/3, c = 1/sqrt(9 d);
  candidate v = (1 + c z)^3, z ~ N(0, 1); accept if v > 0 and
  log u < z^2/2 + d - d v + d log v, u ~ U(0, 1); the draw is d v;
- Gamma(s, 1) for s < 1 by their boost: Gamma(s + 1, 1) * u^(1/s), i.e. log Gamma(s + 1) + log(u)/s;
- vectorised: every sample gets a fixed number of candidates (``tries``, 8) drawn at once, and
  takes its first accepted one. The acceptance rate is above 0.95 for every s >= 1 (the boost
  makes s + 1 >= 1), so all 8 fail with probability below 0.05^8 ~ 4e-11 per sample; such a
  sample gets the mean of Gamma(s', 1), s' (a documented fallback, never met in practice).
  A fixed number of draws per call keeps the generator's stream independent of which
  candidates were accepted.

Uniforms are taken as 1 - U[0, 1) in (0, 1], so no log(0).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

#: candidates per Gamma draw (see the module docstring: failure probability < 4e-11 per sample)
GAMMA_TRIES = 8


def _open_uniform(shape: Sequence[int], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Uniform on (0, 1] (no log(0))."""
    return 1.0 - torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def log_gamma_sample(shape: float, size: Sequence[int], generator: torch.Generator | None,
                     device=None, dtype=torch.float32, tries: int = GAMMA_TRIES) -> torch.Tensor:
    """log of ``size`` independent Gamma(shape, 1) draws (Marsaglia-Tsang, boosted for shape < 1),
    every random number from ``generator``."""
    if shape <= 0:
        raise ValueError(f"Gamma shape must be > 0, got {shape}")
    size = tuple(size)
    boosted = shape < 1
    s = shape + 1.0 if boosted else shape
    d = s - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(size + (tries,), generator=generator, device=device, dtype=dtype)
    u = _open_uniform(size + (tries,), generator, device, dtype)
    v = (1.0 + c * z) ** 3
    positive = v > 0
    log_v = torch.where(positive, v, torch.ones_like(v)).log()
    accept = positive & (u.log() < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.to(torch.uint8).argmax(-1, keepdim=True)  # first accepted candidate (0 if none)
    value = torch.gather(d * v, -1, first).squeeze(-1)
    value = torch.where(accept.any(-1), value, torch.full_like(value, s))  # fallback: the mean
    log_value = value.log()
    if boosted:
        log_value = log_value + _open_uniform(size, generator, device, dtype).log() / shape
    return log_value


def beta_sample(alpha: float, shape: Sequence[int], generator: torch.Generator | None, device=None,
                beta: float | None = None, dtype=torch.float32) -> torch.Tensor:
    """Draws of Beta(alpha, beta) (beta defaults to alpha: MixUp's symmetric Beta(alpha, alpha)),
    of the given shape, from ``generator`` (on ``device``; the generator's own device if None)."""
    if device is None and generator is not None:
        device = generator.device
    beta = alpha if beta is None else beta
    log_g1 = log_gamma_sample(alpha, shape, generator, device, dtype)
    log_g2 = log_gamma_sample(beta, shape, generator, device, dtype)
    return torch.sigmoid(log_g1 - log_g2)  # G1 / (G1 + G2)


def mixup_weights(alpha: float, n: int, generator: torch.Generator | None, device=None,
                  per_sample: bool = True) -> torch.Tensor:
    """lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha) (eq. 9): ``n`` values, one
    per example (``per_sample``) or one repeated for the whole batch. ``alpha`` = 0 means no
    mixing (lambda' = 1), as MixUp's limit."""
    if alpha <= 0:
        return torch.ones(n, device=device)
    lam = beta_sample(alpha, (n if per_sample else 1,), generator, device)
    return torch.maximum(lam, 1.0 - lam).expand(n)


def mix(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float, perm: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 10-11 for a batch: example i is mixed with example ``perm[i]``:
    x'_i = lam_i x_i + (1 - lam_i) x_perm[i], y'_i = lam_i y_i + (1 - lam_i) y_perm[i]. ``lam`` is
    a number or one value per example (a vector of length N); ``x`` is N x ..., ``y`` N x C
    (one-hot labels or probabilities)."""

    def blend(t: torch.Tensor) -> torch.Tensor:
        w = lam
        if isinstance(w, torch.Tensor) and w.dim() > 0:
            w = w.to(t.dtype).reshape(-1, *([1] * (t.dim() - 1)))
        return w * t + (1 - w) * t[perm]

    return blend(x), blend(y)


__all__ = ["beta_sample", "log_gamma_sample", "mix", "mixup_weights"]
