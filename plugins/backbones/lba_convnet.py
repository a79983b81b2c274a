"""The conv nets of the LbA paper (Haeusser et al. 2017, §4, §4.2, §4.3), and the family they belong to.

The paper's notation: C(n, k) is a convolution with n kernels of k x k (stride 1 unless stated),
P(k) a k x k max-pooling, FC(n) a fully connected layer; "convolutional and fully connected
layers have exponential linear units (elu) activation functions" (§4). The backbones here end at
the FC(128) embedding; the extra FC(num_classes) that maps it to logits is the core's classifier
head (``ssl_bench.backbone.Classifier``).

- ``lba_mnist`` (§4, also every domain-adaptation run of the dissertation):
  C(32,3)-C(32,3)-P(2)-C(64,3)-C(64,3)-P(2)-C(128,3)-C(128,3)-P(2)-FC(128).
  1x28x28: 28 -> 14 -> 7 -> 3, FC input 128*3*3; 434,016 parameters.
- ``lba_svhn`` (§4.3): C(32,3)x3-P(2)-C(64,3)x3-P(2)-C(128,3)x3-P(2)-FC(128).
  3x32x32: 32 -> 16 -> 8 -> 4, FC input 128*4*4; 743,040 parameters.
- ``lba_stl10`` (§4.2): C(32,3)-C(64,3,stride 2)-P(3)-C(64,3)-C(128,3)-P(2)-C(128,3)-C(256,3)-P(2)-FC(128).
  3x96x96: 96 -> 48 (strided conv) -> 23 (P(3)) -> 11 -> 5, FC input 256*5*5; 1,392,256 parameters.
  The smallest input it accepts is 17x17.
- ``lba_convnet`` (the family): stages of ``convs_per_stage`` C(w,3), one stage per entry of
  ``widths``, each followed by P(2), then FC(``embedding_dim``). ``lba_mnist`` is
  widths=[32, 64, 128], convs_per_stage=2; ``lba_svhn`` is the same with convs_per_stage=3; the
  default digits grid uses widths=[16, 32] on 8x8 images (8 -> 4 -> 2).

Choices where the paper is silent or self-contradictory (notes/association.md §1 and §4), with
the authors' public TensorFlow code (github.com/haeusser/learning_by_association,
``semisup/architectures.py``) as the tie-breaker:

- Pool stride 2, not the "stride 1" of the §4 text: the reference code's ``slim.max_pool2d``
  defaults to stride 2 (its comments read 28 -> 14 -> 7 -> 3), and with stride 1 the MNIST
  net's FC(128) would see 128*25*25 inputs (10M weights in one layer).
- Pooling has no padding and floors (TensorFlow's "VALID", slim's default): 7 -> 3.
- Convolutions pad to keep the size ("same", padding k // 2). The one strided convolution of
  ``lba_stl10`` pads 1 on each side, so its output is ceil(n / 2) like TensorFlow's "SAME"
  (96 -> 48); TensorFlow would pad only bottom/right, which shifts the sampling grid by one
  pixel and changes nothing else.
- ``lba_stl10``'s P(3): stride 2, no padding, as the reference code's ``stl10_model``
  (``max_pool2d(net, [3, 3], stride=2)``, VALID): 48 -> 23. The paper gives only the window.
  The reference ``stl10_model`` also differs from the paper's list, and we follow the paper:
  it puts batch norm after every layer, has an extra C(128,3) after the last pool, no ELU on
  the FC, and an L2 weight of 5e-3.
- ELU after every convolution and after the FC (the embedding is ELU-activated, as §4 says
  and as the reference ``mnist_model``/``svhn_model`` do).
- Initialisation: PyTorch's defaults (the reference used slim's Xavier); no batch norm.

The paper's "additional L2 weight regularizer with weight 1e-4" (§4) is not part of the network:
it is the protocol key ``weight_decay``, a loss term ``weight * sum(w^2) / 2`` over conv and
linear weights (``ssl_bench.backbone.l2_penalty``, TensorFlow's ``l2_loss`` form, which is what
``slim.l2_regularizer`` adds). The grids that reproduce the paper set ``weight_decay = 1e-4``
(the value §4 states; the reference code's ``mnist_model`` defaults to 1e-3 and its
``stl10_model`` uses 5e-3, neither of which the paper reports).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import torch
from torch import nn

from ssl_bench import Backbone, UserError, hookimpl


@dataclasses.dataclass(frozen=True)
class Conv:
    """C(out, kernel[, stride]): "same" padding (kernel // 2), followed by ELU."""
    out: int
    kernel: int = 3
    stride: int = 1

    def __str__(self) -> str:
        return f"C({self.out},{self.kernel}" + (f",stride {self.stride})" if self.stride != 1 else ")")

    def output_size(self, n: int) -> int:
        return (n + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class Pool:
    """P(kernel): max-pooling with the given stride and padding, flooring."""
    kernel: int = 2
    stride: int = 2
    padding: int = 0

    def __str__(self) -> str:
        return f"P({self.kernel})"

    def output_size(self, n: int) -> int:
        return (n + 2 * self.padding - self.kernel) // self.stride + 1


Layer = Union[Conv, Pool]

MNIST_LAYERS: tuple[Layer, ...] = (Conv(32), Conv(32), Pool(), Conv(64), Conv(64), Pool(), Conv(128), Conv(128), Pool())
SVHN_LAYERS: tuple[Layer, ...] = (Conv(32), Conv(32), Conv(32), Pool(), Conv(64), Conv(64), Conv(64), Pool(),
                                  Conv(128), Conv(128), Conv(128), Pool())
STL10_LAYERS: tuple[Layer, ...] = (Conv(32), Conv(64, 3, stride=2), Pool(3, stride=2), Conv(64), Conv(128), Pool(),
                                   Conv(128), Conv(256), Pool())


def describe(layers: Sequence[Layer], embedding_dim: int) -> str:
    """The paper's notation, e.g. ``C(32,3)-C(32,3)-P(2)-...-FC(128)``."""
    return "-".join([str(layer) for layer in layers] + [f"FC({embedding_dim})"])


def _feature_size(layers: Sequence[Layer], height: int, width: int) -> tuple[int, int, int | None]:
    """Spatial size after ``layers``, and the index of the first layer that leaves nothing (None if none does)."""
    for index, layer in enumerate(layers):
        height, width = layer.output_size(height), layer.output_size(width)
        if height < 1 or width < 1:
            return height, width, index
    return height, width, None


def _smallest_input(layers: Sequence[Layer]) -> int:
    n = 1
    while _feature_size(layers, n, n)[2] is not None:
        n += 1
    return n


class ConvNet(nn.Module):
    """``layers`` (each Conv followed by ELU), then flatten, FC(``embedding_dim``), ELU.

    ``features`` holds the conv/ELU/pool modules in order and ``embedding`` the flatten, FC and
    ELU, so the parameters (and their initialisation order) are those of the layer list."""

    def __init__(self, input_shape: tuple[int, int, int], layers: Sequence[Layer], embedding_dim: int,
                 name: str = "lba_convnet"):
        super().__init__()
        channels, height, width = (int(s) for s in input_shape)
        h, w, culprit = _feature_size(layers, height, width)
        if culprit is not None:
            smallest = _smallest_input(layers)
            raise UserError(f"{name}: input {channels}x{height}x{width} is too small for {describe(layers, embedding_dim)}: "
                            f"nothing is left after layer {culprit + 1}, {layers[culprit]}; inputs must be at least {smallest}x{smallest}")
        modules: list[nn.Module] = []
        for layer in layers:
            if isinstance(layer, Conv):
                modules += [nn.Conv2d(channels, layer.out, layer.kernel, stride=layer.stride, padding=layer.kernel // 2),
                            nn.ELU()]
                channels = layer.out
            else:
                modules.append(nn.MaxPool2d(layer.kernel, stride=layer.stride, padding=layer.padding))
        self.layers = tuple(layers)
        self.features = nn.Sequential(*modules)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, embedding_dim), nn.ELU())
        self.embedding_dim = embedding_dim
        # feature maps: after each pooling stage (stage1, stage2, ...); index = the module after it
        ends = [i + 1 for i, m in enumerate(modules) if isinstance(m, nn.MaxPool2d)]
        self._stage_end = {f"stage{k}": end for k, end in enumerate(ends, 1)}
        self.feature_points = tuple(self._stage_end)

    def forward_to(self, x: torch.Tensor, point: str) -> torch.Tensor:
        """The feature map after pooling stage ``point`` (``stage1`` ...)."""
        return self.features[:self._stage_end[point]](x)

    def forward_from(self, feature_map: torch.Tensor, point: str) -> torch.Tensor:
        """The layers after stage ``point``, then the embedding."""
        return self.embedding(self.features[self._stage_end[point]:](feature_map))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature map after each pooling stage (``stage1``, ``stage2``, ...) and the embedding."""
        out, stage = {}, 0
        for module in self.features:
            x = module(x)
            if isinstance(module, nn.MaxPool2d):
                stage += 1
                out[f"stage{stage}"] = x
        out["embedding"] = self.embedding(x)
        return out


def _check_embedding_dim(name: str, embedding_dim: int) -> None:
    if embedding_dim < 1:
        raise UserError(f"backbones.{name}.embedding_dim must be positive, got {embedding_dim}")


def family_layers(widths: Sequence[int], convs_per_stage: int) -> tuple[Layer, ...]:
    """The ``lba_convnet`` family: per width, ``convs_per_stage`` x C(width,3), then P(2)."""
    return tuple(layer for w in widths for layer in [Conv(w)] * convs_per_stage + [Pool()])


def lba_convnet(input_shape, widths: list[int] = [32, 64, 128], convs_per_stage: int = 2,  # noqa: B006 (read only)
                embedding_dim: int = 128) -> ConvNet:
    """``widths``: channel counts (a list; the older ``"32,64,128"`` string means the same), one
    stage (``convs_per_stage`` 3x3 convs + 2x2 pool) each."""
    parsed = [int(w) for w in widths]
    if not parsed or min(parsed) < 1 or convs_per_stage < 1 or embedding_dim < 1:
        raise UserError("lba_convnet: widths, convs_per_stage and embedding_dim must be positive")
    return ConvNet(tuple(input_shape), family_layers(parsed, convs_per_stage), embedding_dim, "lba_convnet")


def lba_mnist(input_shape, embedding_dim: int = 128) -> ConvNet:
    """LbA §4 MNIST: C(32)-C(32)-P-C(64)-C(64)-P-C(128)-C(128)-P-FC(128) (the family, 2 convs per stage)."""
    _check_embedding_dim("lba_mnist", embedding_dim)
    return ConvNet(tuple(input_shape), MNIST_LAYERS, embedding_dim, "lba_mnist")


def lba_svhn(input_shape, embedding_dim: int = 128) -> ConvNet:
    """LbA §4.3 SVHN: C(32)x3-P-C(64)x3-P-C(128)x3-P-FC(128) (the family, 3 convs per stage)."""
    _check_embedding_dim("lba_svhn", embedding_dim)
    return ConvNet(tuple(input_shape), SVHN_LAYERS, embedding_dim, "lba_svhn")


def lba_stl10(input_shape, embedding_dim: int = 128) -> ConvNet:
    """LbA §4.2 STL-10: C(32,3)-C(64,3,stride 2)-P(3)-C(64,3)-C(128,3)-P(2)-C(128,3)-C(256,3)-P(2)-FC(128).

    P(3) has stride 2 and no padding (the reference code's choice; the paper gives only the window)."""
    _check_embedding_dim("lba_stl10", embedding_dim)
    return ConvNet(tuple(input_shape), STL10_LAYERS, embedding_dim, "lba_stl10")


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("lba_convnet", lba_convnet, "LbA conv-net family: 3x3 conv stages + 2x2 pool, FC embedding"),
        Backbone("lba_mnist", lba_mnist, "LbA paper's MNIST network (§4): " + describe(MNIST_LAYERS, 128)),
        Backbone("lba_svhn", lba_svhn, "LbA paper's SVHN network (§4.3): " + describe(SVHN_LAYERS, 128)),
        Backbone("lba_stl10", lba_stl10, "LbA paper's STL-10 network (§4.2): " + describe(STL10_LAYERS, 128)),
    ]
