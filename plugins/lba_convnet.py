"""The conv-net family of the LbA paper (§4), parameterised by input shape.

Stages of ``convs_per_stage`` 3x3 convolutions (stride 1, "same" padding, ELU), each stage
followed by 2x2 max-pooling with stride 2, then FC(``embedding_dim``) with ELU:

- LbA MNIST network:  widths 32,64,128, 2 convs per stage (``lba_mnist``)
- LbA SVHN network:   widths 32,64,128, 3 convs per stage (``lba_svhn``)
- 8x8 digits:         widths 32,64, 2 convs per stage (``lba_convnet`` with widths="32,64")

Choices where the paper is silent or self-contradictory (see notes/association.md §4): the
pool stride is 2 (the text says 1; the reference code and the FC size say 2) and convolutions
pad to keep the size ("same"). The paper's L2 weight regulariser is the protocol's
``weight_decay`` (a loss term), not part of the network.
"""
from __future__ import annotations

import torch
from torch import nn

from ssl_bench import Backbone, UserError, hookimpl


class ConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], widths: list[int], convs_per_stage: int, embedding_dim: int):
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for stage_width in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(channels, stage_width, 3, padding=1), nn.ELU()]
                channels = stage_width
            layers.append(nn.MaxPool2d(2, stride=2))
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise UserError(f"lba_convnet: {len(widths)} pooling stages need inputs of at least "
                            f"{2 ** len(widths)}x{2 ** len(widths)}, got {input_shape[1]}x{input_shape[2]}")
        self.features = nn.Sequential(*layers)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, embedding_dim), nn.ELU())
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


def lba_convnet(input_shape, widths: str = "32,64,128", convs_per_stage: int = 2, embedding_dim: int = 128) -> ConvNet:
    """``widths``: comma-separated channel counts, one pooling stage each."""
    try:
        parsed = [int(w) for w in widths.split(",")]
    except ValueError:
        raise UserError(f"backbones.lba_convnet.widths must be comma-separated ints, got {widths!r}") from None
    if not parsed or min(parsed) < 1 or convs_per_stage < 1 or embedding_dim < 1:
        raise UserError("lba_convnet: widths, convs_per_stage and embedding_dim must be positive")
    return ConvNet(tuple(input_shape), parsed, convs_per_stage, embedding_dim)


def lba_mnist(input_shape, embedding_dim: int = 128) -> ConvNet:
    """LbA §4 MNIST: C(32)-C(32)-P-C(64)-C(64)-P-C(128)-C(128)-P-FC(128)."""
    return ConvNet(tuple(input_shape), [32, 64, 128], 2, embedding_dim)


def lba_svhn(input_shape, embedding_dim: int = 128) -> ConvNet:
    """LbA §4 SVHN: C(32)x3-P-C(64)x3-P-C(128)x3-P-FC(128)."""
    return ConvNet(tuple(input_shape), [32, 64, 128], 3, embedding_dim)


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("lba_convnet", lba_convnet, "LbA conv-net family: 3x3 conv stages + 2x2 pool, FC embedding"),
        Backbone("lba_mnist", lba_mnist, "LbA paper's MNIST network (§4)"),
        Backbone("lba_svhn", lba_svhn, "LbA paper's SVHN network (§4)"),
    ]
