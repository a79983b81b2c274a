"""Backbones (images -> embeddings) and the classifier that puts a linear head on one.

The split follows timm: the backbone produces features (``embedding_dim`` wide) and the
classification head is separate, because LbA, CCLP and clustering act on the embedding.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from .params import Param, params_of_function


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone plugin: ``build(input_shape, **kwargs)`` returns an ``nn.Module`` mapping
    N x C x H x W float images to N x ``embedding_dim`` embeddings (attribute ``embedding_dim``).

    Keyword arguments of ``build`` (typed, defaulted) are the backbone's parameters, given in a
    grid under ``[base.backbones.NAME]``. A family (name ending in ``*``) gets ``variant``.
    """

    name: str
    build: Callable[..., nn.Module]
    help: str = ""

    @property
    def is_family(self) -> bool:
        return self.name.endswith("*")

    @property
    def params(self) -> list[Param]:
        return params_of_function(self.build, skip=("input_shape", "variant"))


class Classifier(nn.Module):
    """A backbone plus a linear head: ``embed(x)`` gives embeddings, ``head(z)`` logits,
    ``forward(x)`` both composed."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_dim, num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared weights of conv and linear layers, halved (TensorFlow's ``l2_loss``, the
    form the LbA paper's "L2 weight regulariser" takes); biases are not penalised."""
    terms = [m.weight.pow(2).sum() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return 0.5 * torch.stack(terms).sum()
