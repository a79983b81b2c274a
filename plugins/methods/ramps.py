"""Ramps of loss weights, shared by the consistency methods (Π-model, temporal ensembling,
Mean Teacher, and later MixMatch-style methods): one definition, imported by each.

``sigmoid_rampup`` is the "Gaussian" ramp-up of Laine & Aila (ICLR 2017, §2.1: w(t) "ramps
up, starting from zero, along a Gaussian curve"; Appendix A gives the curve, exp[-5 (1 - T)^2]
with T going linearly from 0 to 1 over the ramp-up period). Their code
(github.com/smlaine2/tempens, ``rampup``) and Mean Teacher's (github.com/CuriousAI/mean-teacher,
``ramps.sigmoid_rampup``; Tarvainen & Valpola 2017, Appendix B) use the same curve, clip T to
[0, 1] and give 1 for a ramp of length 0. The curve does not quite start at zero: at T = 0 it
is exp(-5) ~ 0.0067 (the tempens code also zeroes the weight of the very first epoch, whose
targets are not yet defined; temporal_ensembling.py does the per-sample equivalent).
"""
from __future__ import annotations

import math


def sigmoid_rampup(step: float, length: float) -> float:
    """exp(-5 (1 - T)^2) with T = clip(step / length, 0, 1): exp(-5) at step 0, exp(-5/4) half-way,
    1 from ``step >= length`` on. A ``length`` of 0 (or less) means no ramp: 1 at every step."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


def step_after(step: float, delay: float) -> float:
    """The domain-adaptation schedule of associative DA (dissertation ch. 4): alpha is a step
    function, 0 before ``delay`` steps, 1 from step ``delay`` on (delay 0: always 1)."""
    return 1.0 if step >= delay else 0.0


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's adaptation factor lambda_p = 2 / (1 + exp(-gamma p)) - 1 (Ganin et al. 2016, §5.2.2),
    p the training progress in [0, 1]: 0 at the start, ~1 at the end (gamma = 10: 0.987 at p = 0.5)."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


__all__ = ["sigmoid_rampup", "step_after", "dann_lambda"]
