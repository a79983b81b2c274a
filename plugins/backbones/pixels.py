"""Backbone ``pixels``: the normalised image itself, flattened, as the embedding.

No parameters of its own (the classifier head on top is the only trainable layer). With
``steps = 0`` and the ``kmeans_accuracy`` metric it gives the "k-means on pixels" baseline of
the clustering tables (ADC, Haeusser et al. 2018, Table 1); trained with a method it is a
linear (softmax-regression) model on pixels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ssl_bench import Backbone, hookimpl


class Pixels(nn.Module):
    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.embedding_dim = math.prod(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def pixels(input_shape: tuple[int, ...]) -> nn.Module:
    return Pixels(input_shape)


@hookimpl
def ssl_bench_backbones():
    return [Backbone("pixels", pixels, "the normalised pixels, flattened (C*H*W-d embedding, no parameters): "
                                       "k-means on pixels with steps = 0 and metric kmeans_accuracy")]
