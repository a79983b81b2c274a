"""The networks of the CCLP paper (Kamnitsas et al., ICML 2018, §5 "Models"): ``cclp_mnist``,
``cclp_svhn`` and ``cclp_cifar10``.

The paper only cites: "For MNIST we use a CNN similar to Rasmus et al. (2015); Chongxuan et al.
(2017); Haeusser et al. (2017); Li et al. (2017). For SVHN and CIFAR we use the network used as
classifier in Salimans et al. (2016)". The public description followed here is the authors' own
TensorFlow code (github.com/Kamnitsask/semisuper-cclp, ``cclp/neuralnet/models/
feat_extractor_archs.py``: ``mnist_cnn``, ``svhn_cnn``, ``cifar_cnn``; ``classifier.py``;
``configs/svhn/cfg_svhn1k.py``), the one implementation known to have produced Table 1. Our code
is written from the layer lists below, not translated from theirs.

Notation: N(s) Gaussian noise of std s added to the (normalised) input, training only;
D2(p) channel dropout (whole feature maps, ``nn.Dropout2d``), training only; D(p) element
dropout, training only; C(n,3) a 3x3 convolution with n kernels, stride 1, "same" padding,
followed by batch norm and ELU; P(2) 2x2 max-pooling, stride 2, no padding (floors); GAP global
average pooling over the remaining H x W.

- ``cclp_mnist`` (the reference's ``mnist_cnn``, a "conv-small"-style net; 1x28x28):
  N(0.3)-C(32,3)-C(32,3)-P(2)-C(64,3)-C(64,3)-P(2)-C(128,3)-D2(0.1)-C(128,3)-GAP
  28 -> 14 -> 7, embedding = GAP of the last C(128,3): 128 wide; 286,880 parameters.
  For comparison, the ladder network's Conv-Small (Rasmus et al. 2015, MNIST) is
  C(32,5)-P-C(64,3)-C(64,3)-P-C(128,3)-C(10,1)-GAP-FC(10) with BN and ReLU: the same shape
  (three widths, two pools, global pooling), which is what the paper's "similar to" refers to.
- ``cclp_svhn`` (the reference's ``svhn_cnn``; 3x32x32):
  N(0.05)-D2(0.1)-C(64,3)x3-P(2)-D(0.5)-C(128,3)x3-P(2)-D(0.5)-C(128,3)x2-C(128,3)-GAP
  32 -> 16 -> 8; embedding 128; 888,384 parameters.
- ``cclp_cifar10`` (the reference's ``cifar_cnn``; 3x32x32):
  N(0.03)-C(96,3)x3-P(2)-D(0.5)-C(192,3)x3-P(2)-D(0.5)-C(192,3)x2-C(128,3)-GAP
  32 -> 16 -> 8; embedding 128; 1,885,408 parameters.

The Salimans et al. (2016) classifier itself (their ``train_cifar_feature_matching.py``
discriminator) is D(0.2 on the input)-C(96,3)x2-C(96,3,stride 2)-D(0.5)-C(192,3)x2-
C(192,3,stride 2)-D(0.5)-C(192,3,valid)-NIN(192)-NIN(192)-GAP-FC(10), weight-normalised, leaky
ReLU. The CCLP authors' version (followed here) keeps its widths (96/192; 64/128 for SVHN as in
Dai et al.'s BadGAN) and the stage/dropout structure but uses max-pooling instead of the strided
convolutions, "same" 3x3 convolutions instead of the valid-3x3 + two 1x1 (NIN) layers, batch
norm + ELU instead of weight norm + leaky ReLU, and Gaussian input noise (plus channel dropout
for SVHN) instead of input dropout; its last convolution outputs the embedding width (128).

The embedding (``embedding_dim``, what CCLP builds its graph on, Algorithm 1's Z = z(X)) is the
last hidden layer: the global average of the last convolution's ELU output, as the reference's
``emb_z``. The classifier g is the core's linear head on it (``ssl_bench.backbone.Classifier``).
No dropout sits directly before the embedding: the reference code warns that it "makes the
affinity matrix too sparse" (notes/cclp.md, "Numerics").

Choices and deviations, each a parameter where that is useful:

- Batch norm after every convolution (``batch_norm``, default true) with TensorFlow's settings of
  the reference: moving-average decay 0.99 (PyTorch ``momentum=0.01``) and eps 1e-3. Convolutions
  followed by batch norm have no bias (batch norm's shift replaces it; the reference keeps a
  bias that batch norm cancels, 1 parameter per channel that changes nothing); without batch
  norm they have one.
- Noise and dropout act in training mode only (``model.train()``); the core evaluates in
  ``model.eval()`` mode. Their random numbers come from torch's generator, which the core seeds
  from the run seed before building the network.
- Initialisation as the reference: Glorot-uniform weights for ``cclp_svhn``/``cclp_cifar10``,
  He-uniform (fan-in, gain sqrt(2)) for ``cclp_mnist``; zero biases.
- Not reproduced: the reference applies dropout 0.5 to the embedding on the classifier path
  only (``classifier_dropout``) and He-normal initialisation to the classifier; the classifier
  head is the core's plain ``nn.Linear`` (PyTorch's default initialisation), and a dropout in
  front of it only would need a core option. The L2
  regulariser (reference ``l2_reg_feat = l2_reg_classif = 1e-6``) is the protocol key
  ``weight_decay`` (TensorFlow's ``scale * sum(w^2) / 2``, the core's form).
- ``widths`` makes the stage widths a parameter (default: the paper's), for ablations and for
  the grids' ``--smoke`` runs, which shrink the networks so every run checks in a second.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import torch
from torch import nn

from ssl_bench import Backbone, UserError, hookimpl

#: batch-norm settings of the reference (TensorFlow ``momentum=0.99``, default eps 1e-3)
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


# ------------------------------------------------------------------------------------ layer list
@dataclasses.dataclass(frozen=True)
class Noise:
    """N(std): x + std * standard normal noise, training only."""
    std: float

    def __str__(self) -> str:
        return f"N({self.std:g})"


@dataclasses.dataclass(frozen=True)
class ChannelDropout:
    """D2(p): zero whole channels with probability p (scaled by 1 / (1 - p)), training only."""
    p: float

    def __str__(self) -> str:
        return f"D2({self.p:g})"


@dataclasses.dataclass(frozen=True)
class Dropout:
    """D(p): element-wise dropout, training only."""
    p: float

    def __str__(self) -> str:
        return f"D({self.p:g})"


@dataclasses.dataclass(frozen=True)
class Conv:
    """C(out,3): 3x3 convolution, stride 1, "same" padding, then batch norm (optional) and ELU."""
    out: int
    kernel: int = 3

    def __str__(self) -> str:
        return f"C({self.out},{self.kernel})"


@dataclasses.dataclass(frozen=True)
class Pool:
    """P(2): 2x2 max-pooling, stride 2, no padding (floors: 7 -> 3)."""

    def __str__(self) -> str:
        return "P(2)"


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
    """GAP: average over all remaining positions, N x C x H x W -> N x C."""

    def __str__(self) -> str:
        return "GAP"


Layer = Union[Noise, ChannelDropout, Dropout, Conv, Pool, GlobalAvgPool]


def describe(layers: Sequence[Layer]) -> str:
    """The layer list in the notation of the module docstring, repeated convolutions folded:
    ``C(96,3)x3``."""
    parts: list[str] = []
    for layer in layers:
        text = str(layer)
        if parts and parts[-1].split("x")[0] == text and isinstance(layer, Conv):
            count = int(parts[-1].split("x")[1]) if "x" in parts[-1] else 1
            parts[-1] = f"{text}x{count + 1}"
        else:
            parts.append(text)
    return "-".join(parts)


def mnist_layers(widths: Sequence[int] = (32, 64, 128), embedding_dim: int = 128, input_noise: float = 0.3,
                 channel_dropout: float = 0.1) -> tuple[Layer, ...]:
    """``cclp_mnist``: N-C(a)-C(a)-P-C(b)-C(b)-P-C(c)-D2-C(embedding)-GAP."""
    a, b, c = widths
    layers: list[Layer] = [Noise(input_noise)] if input_noise else []
    layers += [Conv(a), Conv(a), Pool(), Conv(b), Conv(b), Pool(), Conv(c)]
    layers += [ChannelDropout(channel_dropout)] if channel_dropout else []
    return tuple(layers + [Conv(embedding_dim), GlobalAvgPool()])


def salimans_layers(widths: Sequence[int] = (96, 192), embedding_dim: int = 128, input_noise: float = 0.03,
                    input_channel_dropout: float = 0.0, dropout: float = 0.5) -> tuple[Layer, ...]:
    """``cclp_svhn`` / ``cclp_cifar10``: N-[D2]-C(a)x3-P-D-C(b)x3-P-D-C(b)x2-C(embedding)-GAP."""
    a, b = widths
    layers: list[Layer] = [Noise(input_noise)] if input_noise else []
    layers += [ChannelDropout(input_channel_dropout)] if input_channel_dropout else []
    layers += [Conv(a)] * 3 + [Pool()] + ([Dropout(dropout)] if dropout else [])
    layers += [Conv(b)] * 3 + [Pool()] + ([Dropout(dropout)] if dropout else [])
    return tuple(layers + [Conv(b)] * 2 + [Conv(embedding_dim), GlobalAvgPool()])


# ------------------------------------------------------------------------------------ modules
class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise in training mode; the identity in evaluation mode."""

    def __init__(self, std: float):
        super().__init__()
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return f"std={self.std:g}"


class CCLPConvNet(nn.Module):
    """A layer list (see the module docstring) as one ``nn.Sequential`` (``net``); forward gives
    N x ``embedding_dim`` embeddings."""

    def __init__(self, input_shape: tuple[int, int, int], layers: Sequence[Layer], *, batch_norm: bool = True,
                 init: str = "glorot", name: str = "cclp"):
        super().__init__()
        channels, height, width = (int(s) for s in input_shape)
        pools = sum(isinstance(layer, Pool) for layer in layers)
        if min(height, width) >> pools < 1:
            raise UserError(f"{name}: input {channels}x{height}x{width} is too small for {describe(layers)}: "
                            f"its {pools} 2x2 poolings need inputs of at least {2 ** pools}x{2 ** pools}")
        modules: list[nn.Module] = []
        for layer in layers:
            if isinstance(layer, Noise):
                modules.append(GaussianNoise(layer.std))
            elif isinstance(layer, ChannelDropout):
                modules.append(nn.Dropout2d(layer.p))
            elif isinstance(layer, Dropout):
                modules.append(nn.Dropout(layer.p))
            elif isinstance(layer, Conv):
                modules.append(nn.Conv2d(channels, layer.out, layer.kernel, padding=layer.kernel // 2,
                                         bias=not batch_norm))
                if batch_norm:
                    modules.append(nn.BatchNorm2d(layer.out, eps=BN_EPS, momentum=BN_MOMENTUM))
                modules.append(nn.ELU())
                channels = layer.out
            elif isinstance(layer, Pool):
                modules.append(nn.MaxPool2d(2, stride=2))
            elif isinstance(layer, GlobalAvgPool):
                modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            else:  # pragma: no cover - the layer lists above only hold the types handled here
                raise TypeError(f"unknown layer {layer!r}")
        if not isinstance(layers[-1], GlobalAvgPool):
            raise ValueError("the layer list must end with GlobalAvgPool (the embedding)")
        self.layers = tuple(layers)
        self.net = nn.Sequential(*modules)
        self.embedding_dim = channels
        _initialise(self.net, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _initialise(net: nn.Module, init: str) -> None:
    """Reference-code initialisation: conv weights Glorot-uniform (``svhn_cnn``, ``cifar_cnn``) or
    He-uniform, fan-in, gain sqrt(2) (``mnist_cnn``); biases zero; batch norm scale 1, shift 0."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            if init == "glorot":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_uniform_(module.weight, a=0.0, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------ builders
def _parse_widths(name: str, widths: list[int], count: int) -> tuple[int, ...]:
    parsed = tuple(int(w) for w in widths)
    if len(parsed) != count or min(parsed) < 1:
        raise UserError(f"backbones.{name}.widths must be {count} positive ints, got {widths!r}")
    return parsed


def _check(name: str, embedding_dim: int, **probabilities: float) -> None:
    if embedding_dim < 1:
        raise UserError(f"backbones.{name}.embedding_dim must be positive, got {embedding_dim}")
    for key, value in probabilities.items():
        if key == "input_noise":
            if not (value >= 0 and math.isfinite(value)):
                raise UserError(f"backbones.{name}.input_noise must be a finite std >= 0, got {value}")
        elif not 0 <= value < 1:
            raise UserError(f"backbones.{name}.{key} must be a probability in [0, 1), got {value}")


def cclp_mnist(input_shape, embedding_dim: int = 128, widths: list[int] = [32, 64, 128], input_noise: float = 0.3,
               channel_dropout: float = 0.1, batch_norm: bool = True) -> CCLPConvNet:
    """CCLP §5 MNIST network (reference ``mnist_cnn``):
    N(0.3)-C(32,3)x2-P(2)-C(64,3)x2-P(2)-C(128,3)-D2(0.1)-C(128,3)-GAP, batch norm + ELU."""
    _check("cclp_mnist", embedding_dim, input_noise=input_noise, channel_dropout=channel_dropout)
    layers = mnist_layers(_parse_widths("cclp_mnist", widths, 3), embedding_dim, input_noise, channel_dropout)
    return CCLPConvNet(tuple(input_shape), layers, batch_norm=batch_norm, init="he", name="cclp_mnist")


def _salimans(name: str, input_shape, embedding_dim: int, widths: list[int], input_noise: float,
              input_channel_dropout: float, dropout: float, batch_norm: bool) -> CCLPConvNet:
    _check(name, embedding_dim, input_noise=input_noise, input_channel_dropout=input_channel_dropout,
           dropout=dropout)
    layers = salimans_layers(_parse_widths(name, widths, 2), embedding_dim, input_noise, input_channel_dropout,
                             dropout)
    return CCLPConvNet(tuple(input_shape), layers, batch_norm=batch_norm, init="glorot", name=name)


def cclp_svhn(input_shape, embedding_dim: int = 128, widths: list[int] = [64, 128], input_noise: float = 0.05,
              input_channel_dropout: float = 0.1, dropout: float = 0.5, batch_norm: bool = True) -> CCLPConvNet:
    """CCLP §5 SVHN network (Salimans et al. 2016 classifier as in the reference ``svhn_cnn``):
    N(0.05)-D2(0.1)-C(64,3)x3-P(2)-D(0.5)-C(128,3)x3-P(2)-D(0.5)-C(128,3)x2-C(128,3)-GAP."""
    return _salimans("cclp_svhn", input_shape, embedding_dim, widths, input_noise, input_channel_dropout, dropout,
                     batch_norm)


def cclp_cifar10(input_shape, embedding_dim: int = 128, widths: list[int] = [96, 192], input_noise: float = 0.03,
                 input_channel_dropout: float = 0.0, dropout: float = 0.5, batch_norm: bool = True) -> CCLPConvNet:
    """CCLP §5 CIFAR-10 network (Salimans et al. 2016 classifier as in the reference ``cifar_cnn``):
    N(0.03)-C(96,3)x3-P(2)-D(0.5)-C(192,3)x3-P(2)-D(0.5)-C(192,3)x2-C(128,3)-GAP."""
    return _salimans("cclp_cifar10", input_shape, embedding_dim, widths, input_noise, input_channel_dropout,
                     dropout, batch_norm)


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("cclp_mnist", cclp_mnist, "CCLP paper's MNIST net (§5, conv-small style): " + describe(mnist_layers())),
        Backbone("cclp_svhn", cclp_svhn, "CCLP paper's SVHN net (§5, Salimans et al. 2016 classifier): "
                 + describe(salimans_layers((64, 128), 128, 0.05, 0.1))),
        Backbone("cclp_cifar10", cclp_cifar10, "CCLP paper's CIFAR-10 net (§5, Salimans et al. 2016 classifier): "
                 + describe(salimans_layers())),
    ]
