"""The ResNets of associative deep clustering (ADC; Haeusser, Plapp, Golkov, Aljalbout and Cremers
2018, §3.1; Haeusser's dissertation ch. 5, the same text): He et al.'s CIFAR ResNets
``cifar_resnet20`` (n = 3: MNIST, FRGC) and ``cifar_resnet32`` (n = 5: SVHN, CIFAR-10), and the
halved ImageNet ResNet ``imagenet_resnet_half`` for STL-10's 64 x 64 crops. He et al. = "Deep
Residual Learning for Image Recognition", CVPR 2016.

ADC §3.1: "For ResNet, we use the architecture specified for CIFAR-10 by [He et al.] for all
datasets except STL-10. Due to the larger resolution of this dataset, we adopt the ImageNet variant,
and modify it in the following way: the kernel size for the first convolutional layer becomes 3,
with a stride of 1; the subsequent max-pooling layer is set to 2x2; we reduce the number of filters
by a factor of 2. ... For ResNet, we use 64-dimensional embedding vectors, as the CIFAR10-variant
only has 64 filters in the last layer. We use a block size of 3 for MNIST, FRGC and STL-10, and 5
for SVHN and CIFAR-10."

Each backbone ends at its embedding (``embedding_dim``, 64 by default); the classifier on it is the
core's head (``ssl_bench.backbone.Classifier``; for ADC the cluster head W of k logits). Inputs are
N x C x H x W with any C (the first convolution takes C channels: MNIST 1, the others 3).
``named_features(x)`` gives ``stem``, each stage, ``pooled`` (the globally average-pooled last
stage) and ``embedding``.

Parameter counts (3-channel input; "+ head" adds the core's nn.Linear(embedding_dim, 10)):

- ``cifar_resnet20``: with ``embedding_dim = 0`` (no embedding FC: the 64-d pooled feature is the
  embedding, i.e. exactly He et al.'s network) 269,072, + head 269,722 = 0.27M (He et al., Table 6:
  0.27M); with the default FC(64) embedding 273,232, + head 273,882.
- ``cifar_resnet32``: 463,504, + head 464,154 = 0.46M (Table 6: 0.46M); with FC(64) 467,664,
  + head 468,314.
- ``imagenet_resnet_half`` (3 blocks per stage): 4,363,680 without the embedding FC (the pooled
  feature is 256-d), 4,380,128 with FC(64), + head 4,380,778. With ``blocks = 2`` (the ResNet-18
  layout) 2,795,040 / 2,811,488; its full-width counterpart is torchvision's ResNet-18 with a
  3 x 3 stem (conv weights x 4, batch-norm parameters x 2).

``cifar_resnet20`` / ``cifar_resnet32`` (He et al. 2016, §4.2)
    "The first layer is 3x3 convolutions. Then we use a stack of 6n layers with 3x3 convolutions on
    the feature maps of sizes {32, 16, 8} respectively, with 2n layers for each feature map size.
    The numbers of filters are {16, 32, 64} respectively. The subsampling is performed by
    convolutions with a stride of 2. The network ends with a global average pooling, a 10-way
    fully-connected layer, and softmax." Here: C(16,3)-BN-ReLU; three stages of n basic blocks
    (widths 16, 32, 64; strides 1, 2, 2); global average pooling (64-d); then the embedding FC.

    - Basic block (§3, Fig. 2, and §3.4: batch normalization "right after each convolution and
      before activation"): ReLU(BN(C(w,3)(ReLU(BN(C(w,3,stride)(x))))) + shortcut(x)), the
      original post-activation block, convolutions without bias.
    - Shortcuts, ``shortcut`` = "A" (default): "On this dataset we use identity shortcuts in all
      cases (i.e., option A), so our residual models have exactly the same depth, width, and number
      of parameters as the plain counterparts" (§4.2). Option A (§3.3, §4.1): where the width
      doubles and the map halves, the identity is sampled with stride 2 (every other row and column,
      from (0, 0)) and the new channels are zeros, appended after the input's channels, as in
      Facebook's Torch reimplementation of He et al. (``fb.resnet.torch``, ``models/resnet.lua``,
      shortcut type 'A': ``SpatialAveragePooling(1, 1, stride, stride)``, then a ``Concat`` of the
      input and ``MulConstant(0)`` of it). Parameter-free. "B": a 1x1 projection (stride 2) + BN at
      the two downsampling blocks, identities elsewhere (§3.3 option B; 2,752 more parameters).
    - The embedding: the pooled feature is already 64-d, and ADC's reason for 64 ("as the
      CIFAR10-variant only has 64 filters in the last layer") would fit the pooled feature itself.
      We add a linear FC(64) (with bias, no activation) after the pooling by default, because the
      authors' code does (``jplapp/associative_deep_clustering``, ``semisup/architectures.py``,
      ``resnet_cifar_model``: the final average pool, flattened, dropout, then
      ``tf.layers.dense(emb_size)`` without activation), because STL-10's network needs one anyway
      (256 filters, 64-d embedding), and because the pooled feature is a mean of ReLU outputs,
      non-negative in every coordinate, so no two embeddings (or an embedding and a centroid) could
      have a negative dot product in the association matrix. ``embedding_dim = 0`` drops the FC
      (embedding = the pooled 64-d feature): He et al.'s exact network once the core's 10-way head
      is added.
    - Where the authors' code differs (not followed; He et al. is the reference the paper names): it
      builds TensorFlow's official *pre-activation* CIFAR ResNet (``cifar10_resnet_v2_generator``)
      with 1x1 projection shortcuts on the first block of every stage.

``imagenet_resnet_half`` (ADC §3.1, STL-10)
    He et al.'s ImageNet ResNet (Table 1: C(64,7,stride 2)-P(3,stride 2), four stages of basic
    blocks, widths 64, 128, 256, 512, strides 1, 2, 2, 2, global average pooling) with ADC's three
    changes: a C(32,3,stride 1)-BN-ReLU stem, a 2x2 max-pool with stride 2 (no padding, flooring)
    and halved widths 32, 64, 128, 256. ``blocks`` per stage: 3 (default), ADC's "block size of 3
    for ... STL-10" (the authors' code passes the same ``num_blocks`` flag, default 3, to its STL-10
    network); 2 is the ResNet-18 layout. For 64 x 64 crops: 64 -> 32 (pool) -> 32 -> 16 -> 8 -> 4,
    global average pooling (256-d), embedding FC(64) (``embedding_dim = 0``: the 256-d feature).
    The name says what it is; "ResNet-18" would be wrong at 3 blocks per stage (that is 26 layers).

    - ``shortcut`` = "B" (default): 1x1 projection + BN where the width changes (stages 2-4), as in
      He et al.'s deeper ImageNet ResNets and torchvision's; the authors' code also uses projections.
      "A": zero-padded identity.
    - ``strides`` (default [1, 2, 2, 2], the ImageNet layout the paper adopts without changing it):
      the authors' code (``stl10_resnet_v2_generator``) uses [1, 1, 2, 2], ending at 8 x 8 for a
      64 x 64 crop; set that to follow it. That code is also pre-activation with a projection on
      every stage's first block; not followed.

Common choices
    - Batch norm: PyTorch's defaults (momentum 0.1, eps 1e-5, affine), those of Torch's
      ``SpatialBatchNormalization`` used by ``fb.resnet.torch``; ``bn_momentum`` is a parameter.
    - Initialisation: convolutions ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
      N(0, 2 / (k * k * out)), as ``fb.resnet.torch`` and torchvision (He et al. §3.4 use the
      initialisation of their PReLU paper); batch norm weight 1, bias 0; the embedding FC keeps
      nn.Linear's default initialisation.
    - ``dropout`` (default 0): dropout on the pooled feature before the embedding FC, training only.
      The ADC paper does not mention dropout; the authors' clustering script
      (``semisup/train_unsup2.py``) defaults to ``dropout_keep_prob`` 0.8, i.e. ``dropout = 0.2``.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ssl_bench import Backbone, UserError, hookimpl
from ssl_bench_plugins.backbones.ssl_networks import _channels, _check_positive, _check_range, _init_conv_bn

CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_HALF_WIDTHS = (32, 64, 128, 256)


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: ``x[:, :, ::stride, ::stride]`` with ``c_out - c_in`` zero channels
    appended (``fb.resnet.torch``'s shortcut type A). No parameters."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"option A cannot narrow {c_in} -> {c_out} channels")
        self.extra, self.stride = c_out - c_in, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016, Fig. 2): ReLU(BN(C3(ReLU(BN(C3(x, stride))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(c_in, c_out, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out, momentum=bn_momentum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """``stem``, stages of basic blocks (one per width, ``blocks`` each, first block strided), global
    average pooling, dropout, embedding FC (none if ``embedding_dim`` is 0)."""

    def __init__(self, stem: nn.Module, stem_width: int, widths, strides, blocks: int, shortcut: str,
                 embedding_dim: int, dropout: float, bn_momentum: float):
        super().__init__()
        self.stem = stem
        stages, c_in = [], stem_width
        for width, stride in zip(widths, strides):
            stages.append(nn.Sequential(*[BasicBlock(c_in if b == 0 else width, width, stride if b == 0 else 1,
                                                     shortcut, bn_momentum) for b in range(blocks)]))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(c_in, embedding_dim) if embedding_dim else nn.Identity()
        self.pooled_dim = c_in
        self.embedding_dim = embedding_dim or c_in
        self.feature_points = tuple(f"stage{i}" for i in range(1, len(stages) + 1))
        _init_conv_bn(self, mode="fan_out", nonlinearity="relu")

    def forward_to(self, x: torch.Tensor, point: str) -> torch.Tensor:
        """The feature map after stage ``point`` (``stage1`` ...)."""
        x = self.stem(x)
        for stage in self.stages[:self.feature_points.index(point) + 1]:
            x = stage(x)
        return x

    def forward_from(self, feature_map: torch.Tensor, point: str) -> torch.Tensor:
        """The stages after ``point``, global average pooling, dropout, the embedding FC."""
        x = feature_map
        for stage in self.stages[self.feature_points.index(point) + 1:]:
            x = stage(x)
        return self.embedding(self.dropout(x.mean(dim=(2, 3))))

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stem``, ``stage1``..``stageK`` (block outputs), ``pooled`` (global average) and ``embedding``."""
        out = {"stem": self.stem(x)}
        x = out["stem"]
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            out[f"stage{i}"] = x
        out["pooled"] = x.mean(dim=(2, 3))
        out["embedding"] = self.embedding(self.dropout(out["pooled"]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.named_features(x)["embedding"]


def _conv_bn_relu(c_in: int, c_out: int, bn_momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.ReLU()]


def _check_common(name: str, shortcut: str, embedding_dim: int, dropout: float, bn_momentum: float) -> None:
    if shortcut not in ("A", "B"):
        raise UserError(f'backbones.{name}.shortcut must be "A" or "B", got {shortcut!r}')
    if embedding_dim < 0:
        raise UserError(f"backbones.{name}.embedding_dim must be >= 0 (0: no embedding FC), got {embedding_dim}")
    _check_range(name, "dropout", dropout, 0.0, 1.0, high_open=True)
    _check_range(name, "bn_momentum", bn_momentum, 0.0, 1.0)


def cifar_resnet(input_shape, n: int, name: str, shortcut: str = "A", embedding_dim: int = 64, dropout: float = 0.0,
                 bn_momentum: float = 0.1) -> ResNet:
    """He et al.'s CIFAR ResNet-(6n + 2) (§4.2): C(16,3), 3 x n basic blocks of 16, 32, 64, GAP, FC(embedding_dim)."""
    c, _, _ = _channels(name, input_shape)
    _check_positive(name, "n", n)
    _check_common(name, shortcut, embedding_dim, dropout, bn_momentum)
    stem = nn.Sequential(*_conv_bn_relu(c, CIFAR_WIDTHS[0], bn_momentum))
    return ResNet(stem, CIFAR_WIDTHS[0], CIFAR_WIDTHS, (1, 2, 2), n, shortcut, embedding_dim, dropout, bn_momentum)


def cifar_resnet20(input_shape, shortcut: Literal["A", "B"] = "A", embedding_dim: int = 64, dropout: float = 0.0,
                   bn_momentum: float = 0.1) -> ResNet:
    """ResNet-20 (He et al. 2016 §4.2, n = 3; ADC's network for MNIST and FRGC).

    ``shortcut``: "A" zero-padded identity (He et al. on CIFAR) or "B" projection;
    ``embedding_dim``: width of the linear embedding FC after the 64-d pooling (0: none);
    ``dropout``: on the pooled feature, training only."""
    return cifar_resnet(input_shape, 3, "cifar_resnet20", shortcut, embedding_dim, dropout, bn_momentum)


def cifar_resnet32(input_shape, shortcut: Literal["A", "B"] = "A", embedding_dim: int = 64, dropout: float = 0.0,
                   bn_momentum: float = 0.1) -> ResNet:
    """ResNet-32 (He et al. 2016 §4.2, n = 5; ADC's network for SVHN and CIFAR-10); parameters as ``cifar_resnet20``."""
    return cifar_resnet(input_shape, 5, "cifar_resnet32", shortcut, embedding_dim, dropout, bn_momentum)


def imagenet_resnet_half(input_shape, blocks: int = 3, shortcut: Literal["A", "B"] = "B",
                         strides: list[int] = [1, 2, 2, 2],  # noqa: B006 (read only)
                         embedding_dim: int = 64, dropout: float = 0.0, bn_momentum: float = 0.1) -> ResNet:
    """He et al.'s ImageNet ResNet as ADC §3.1 modifies it for STL-10: C(32,3,stride 1) stem, 2x2
    max-pool, halved widths (32, 64, 128, 256); inputs at least 2 x 2.

    ``blocks``: basic blocks per stage (ADC: 3; 2 = the ResNet-18 layout); ``strides``: the four
    stages' strides (ImageNet: [1, 2, 2, 2]; the ADC authors' code: [1, 1, 2, 2]); other
    parameters as ``cifar_resnet20`` (``shortcut`` default "B")."""
    name = "imagenet_resnet_half"
    c, h, w = _channels(name, input_shape)
    if min(h, w) < 2:
        raise UserError(f"{name}: input {c}x{h}x{w} is too small: the 2x2 max-pool after the stem needs at least 2x2")
    _check_positive(name, "blocks", blocks)
    strides = [int(s) for s in strides]
    if len(strides) != 4 or min(strides) < 1:
        raise UserError(f"backbones.{name}.strides must be four positive ints (one per stage), got {strides}")
    _check_common(name, shortcut, embedding_dim, dropout, bn_momentum)
    width = IMAGENET_HALF_WIDTHS[0]
    stem = nn.Sequential(*_conv_bn_relu(c, width, bn_momentum), nn.MaxPool2d(2, stride=2))
    return ResNet(stem, width, IMAGENET_HALF_WIDTHS, strides, blocks, shortcut, embedding_dim, dropout, bn_momentum)


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("cifar_resnet20", cifar_resnet20, "ResNet-20 (He et al. 2016 §4.2; ADC): C(16,3), 3x3 basic blocks "
                 "of 16/32/64, option-A shortcuts, GAP, FC(64) embedding; 0.27M parameters with a 10-way head "
                 "and embedding_dim = 0"),
        Backbone("cifar_resnet32", cifar_resnet32, "ResNet-32 (He et al. 2016 §4.2; ADC): as cifar_resnet20 with "
                 "5 blocks per stage; 0.46M parameters with a 10-way head and embedding_dim = 0"),
        Backbone("imagenet_resnet_half", imagenet_resnet_half, "ADC's STL-10 network (§3.1): He et al.'s ImageNet "
                 "ResNet with a C(32,3) stem, 2x2 max-pool, halved widths 32/64/128/256, 3 blocks per stage "
                 "(blocks = 2: ResNet-18 layout), GAP, FC(64) embedding; for 64x64 crops"),
    ]
