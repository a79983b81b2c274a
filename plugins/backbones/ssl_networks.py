"""The standard networks of the consistency-regularisation literature: ``wrn28_2`` (WRN-28-2 of
Oliver et al. 2018 and FixMatch), ``convnet13`` (the 13-layer "conv-large" of Laine & Aila 2017
and Mean Teacher) and ``shake_resnet26`` (Mean Teacher's ResNet-26 2x96d Shake-Shake, after
Gastaldi 2017).

Each backbone ends at its embedding (the globally average-pooled last feature map); the linear
classifier on it is the core's head (``ssl_bench.backbone.Classifier``). Inputs are N x C x H x W
with any C (the first convolution takes C channels). ``named_features(x)`` gives the output of each
stage and the embedding. Where a paper is silent the authors' public code decided, read (not
copied) from: Oliver et al. ``brain-research/realistic-ssl-evaluation`` (``lib/networks.py``,
``lib/hparams.py``), FixMatch ``google-research/fixmatch`` (``libml/models.py``), Laine & Aila
``s-laine/tempens`` (``train.py``, ``zca_bn.py``, ``config.py``), Mean Teacher
``CuriousAI/mean-teacher`` (``pytorch/mean_teacher/architectures.py``, ``mean_teacher/model.py``),
Gastaldi ``xgastaldi/shake-shake`` (``models/shakeshake*.lua``).

Parameter counts (3 x 32 x 32 input; "+ head" adds the core's nn.Linear(embedding_dim, 10)):

- ``wrn28_2``: 1,466,320; + head 1,467,610 = 1.47M (the count of the FixMatch PyTorch port;
  Oliver et al. round it to 1.5M).
- ``convnet13``: 3,120,512; + head 3,121,802 (0.26 % under the quoted 3.13M, see below).
- ``shake_resnet26``: 26,189,616; + head 26,193,466 (Gastaldi: 26.2M).

``wrn28_2``
    Stem C(16,3); three stages of ``(depth - 4) / 6`` = 4 pre-activation basic blocks,
    BN-LReLU-C(w,3,stride)-BN-LReLU-C(w,3), widths 16k, 32k, 64k (k = ``widen_factor`` = 2:
    32, 64, 128), strides 1, 2, 2; a 1x1 projection shortcut (stride as the block) where the width
    changes; then BN-LReLU and global average pooling: embedding 64k = 128.

    - Which tensor the shortcut sees follows both authors' TensorFlow code (Oliver's
      ``_residual``, FixMatch's ``residual``): the network's first block
      ("activate_before_residual") feeds its BN-LReLU output to both its first conv and its
      projection; every other block feeds BN-LReLU(x) to its first conv and the raw x to the
      shortcut. (The PyTorch ports, e.g. kekmodel/FixMatch-pytorch, give the first conv of the
      first blocks of stages 2 and 3 the raw x and drop their bn1 output; not followed.)
    - Batch norm: momentum 0.001 (TensorFlow decay 0.999, both references), eps 1e-3 (TensorFlow's
      default, used by both references; the PyTorch ports keep PyTorch's 1e-5), affine.
      ``bn_momentum`` is a parameter because with 0.001 the running statistics need thousands
      of steps to settle: a short run evaluated in eval mode would see stale statistics.
    - Leaky ReLU slope 0.1 everywhere (Oliver's ``lrelu_leakiness``, FixMatch's ``alpha``).
    - Convolutions have no bias (Oliver's raw ``conv2d``, the PyTorch reference; FixMatch's TF
      ``tf.layers.conv2d`` keeps biases, which every downstream batch norm cancels).
    - Initialisation: ``kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu")`` (with
      PyTorch's default a = 0, i.e. std sqrt(2 / (k*k*out))) for convolutions, as FixMatch's
      PyTorch code; the same std as both TF references' ``random_normal(stddev=sqrt(2/(k*k*out)))``.
      Batch norm weight 1, bias 0. The head is the core's nn.Linear with PyTorch's default
      initialisation (the references use Glorot-normal there; not reproduced).
    - No dropout: neither paper uses any in WRN-28-2 (FixMatch's TF code has only a ``dropout``
      argument before the head, default 0; the PyTorch port's in-block ``drop_rate`` defaults to 0),
      so there is no ``drop_rate``.
    - ``input_noise`` (default 0, as FixMatch): Oliver et al.'s code adds N(0, 0.15^2) noise to the
      input inside the network in training for CIFAR-10 (``gaussian_noise=True``; off for SVHN);
      set 0.15 to reproduce that. Training mode only, drawn with ``torch.randn_like``.

``convnet13`` (Laine & Aila 2017, Table 5; Mean Teacher's CIFAR-10/SVHN network)
    N(``input_noise``=0.15)-C(128,3)x3-P(2)-D(``dropout``=0.5)-C(256,3)x3-P(2)-D(0.5)-
    C(512,3,valid)-C(256,1)-C(``embedding_dim``=128,1)-GAP, each C followed by batch norm and
    leaky ReLU 0.1. 32x32: 32 -> 16 -> 8 -> 6 (valid 3x3) -> GAP, embedding 128.

    - Normalisation: standard batch norm (affine) after every convolution, momentum 0.001 and eps
      1e-5. The papers' code uses weight normalisation + *mean-only* batch norm (running-mean decay
      0.999, Laine's ``batch_normalization_momentum``, Mean Teacher's ``eval_mean_ema_decay``) with
      a data-dependent initialisation of the gains; we use full batch norm (the benchmark's specification;
      FixMatch's CNN13 reproduction does the same). The parameter count is unchanged: weight norm's gain g
      and mean-only BN's bias b are exactly batch norm's weight and bias, one pair per channel.
    - Convolutions have no bias (Laine's ``mean_only_bn`` deletes the layer's bias; batch norm's
      shift replaces it). Initialisation: He-normal (fan-in, gain sqrt(2)), the
      ``HeNormal('relu')`` that Laine's code declares (its weight norm then keeps only the
      direction); batch norm weight 1, bias 0.
    - Pooling: 2x2 max-pooling, stride 2, flooring (Lasagne's ``MaxPool2DLayer``). Dropout is
      element-wise with 1/(1-p) rescaling (Lasagne's ``DropoutLayer``), training mode only.
    - ``input_noise``: x + sigma * ``torch.randn_like(x)``, training mode only (Lasagne's
      ``GaussianNoiseLayer`` is off in deterministic passes). It draws from torch's global generator,
      so the network is random in training mode (two forward passes of the same batch differ,
      which the Pi model and Mean Teacher rely on); eval mode is deterministic.
    - Smallest input 12x12: the valid 3x3 convolution needs a 3x3 map after the two pools
      (12 -> 6 -> 3 -> 1); 8x8 digits (8 -> 4 -> 2) are refused with a UserError.
    - The 3.13M: the Table 5 layer list has 3,116,416 convolution weights and 2,048 channels; with
      one (scale, shift) pair per channel (batch norm's affine pair here, weight norm's g and
      mean-only BN's b in the papers' code) that is 3,120,512, 3,121,802 with a 10-way head and
      3,123,092 with Mean Teacher's two heads: 3.12M, 0.26 % under 3.13M with one head. 3.13M
      (>= 3,125,000) needs two more numbers per channel, e.g. counting batch norm's running mean and
      variance (the state dict: 3,120,512 + 4,096 + 1,290 = 3,125,898), or a port that keeps conv
      biases and weight-norm gains next to batch norm's pair (the same 3,125,898 with one head);
      either way the extra 4,096 are not free parameters of the paper's network.

``shake_resnet26`` (Mean Teacher's ``cifar_shakeshake26``; Gastaldi's "26 2x96d")
    Stem C(16,3) (no batch norm, no activation); three stages of ``(depth - 2) / 6`` = 4
    Shake-Shake blocks, widths w, 2w, 4w (w = ``width`` = 96: 96, 192, 384), strides 1, 2, 2; then
    global average pooling (no final ReLU): embedding 4w = 384. A block is
    x -> shortcut(x) + shake(branch1(x), branch2(x)), each branch ReLU-C(w,3,stride)-BN-ReLU-C(w,3)-BN.

    - Shortcuts as Mean Teacher's code: identity where shape is kept; the stage-1 widening block
      (16 -> 96, stride 1): 1x1 conv + BN; the stride-2 blocks: ``ShiftConvDownsample`` =
      ReLU of [x sampled at even positions, x sampled at odd positions] (two 1-pixel-shifted
      sub-samplings, concatenated), a grouped 1x1 conv (groups 2, each group in -> out/2, with bias
      as ``nn.Conv2d``'s default), BN. For an odd H or W the odd-position sampling is zero-padded
      at the bottom/right so both halves have the branch's ceil(H/2) (as Gastaldi's zero-padded
      shift); for even sizes this is exactly Mean Teacher's ``x[:, :, 1::2, 1::2]``.
    - Differences from Gastaldi's Torch code, where we follow Mean Teacher (and FixMatch's TF
      ``ShakeNet``, which agrees with it): Gastaldi puts BN after the stem, a ReLU before the
      pooling, the shifted two-path shortcut also on the stride-1 widening block, and no biases in
      the shortcut convolutions (his count: 26,189,072 + head).
    - Shake-Shake (Gastaldi's "Shake-Shake-Image", per-sample coefficients): in training, the
      forward output is alpha * b1 + (1 - alpha) * b2 with alpha ~ U(0, 1) per sample; the backward pass sends
      beta * g and (1 - beta) * g to the branches with beta ~ U(0, 1) per sample, independent of
      alpha (``ShakeShake``, a custom autograd Function). In eval mode 0.5 * (b1 + b2).
      Both alpha and beta are drawn in the forward pass with ``torch.rand`` on torch's global
      generator (which the engine seeds per run before building) and beta is kept for the
      backward. Mean Teacher and Gastaldi draw beta inside the backward; the distribution is the
      same, and drawing in the forward keeps the random stream independent of whether and when
      a backward runs (teacher passes under ``no_grad``, CUDA's backward thread).
    - Batch norm: PyTorch's defaults (momentum 0.1, eps 1e-5), as Mean Teacher (and Torch's
      SpatialBatchNormalization defaults in Gastaldi's code); ``bn_momentum`` is a parameter.
    - Initialisation as both codes: convolutions N(0, sqrt(2 / (k*k*out))) (``kaiming_normal_``,
      fan-out, ReLU gain), batch norm weight 1, bias 0; the grouped shortcut conv's bias keeps
      PyTorch's default (Mean Teacher does not re-initialise it).
    - Mean Teacher's two heads (``fc1``/``fc2``, for its logit-separation variant) are not part of
      the backbone; the core adds one head.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ssl_bench import Backbone, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.backbones.cclp_networks import GaussianNoise  # x + std N(0, 1), training only

LEAKY_SLOPE = 0.1


# ------------------------------------------------------------------------------------ helpers
def _channels(name: str, input_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"{name}: input shape must be (channels, height, width), got {input_shape!r}") from None
    if min(c, h, w) < 1:
        raise UserError(f"{name}: input shape must be positive, got {c}x{h}x{w}")
    return c, h, w


def _check_range(name: str, key: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    if not (low <= value < high if high_open else low <= value <= high) or math.isnan(value):
        bracket = ")" if high_open else "]"
        raise UserError(f"backbones.{name}.{key} must be in [{low:g}, {high:g}{bracket}, got {value}")


def _check_positive(name: str, key: str, value: int) -> None:
    if value < 1:
        raise UserError(f"backbones.{name}.{key} must be positive, got {value}")


def _init_conv_bn(module: nn.Module, mode: str, nonlinearity: str) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ WRN-28-2
class PreActBlock(nn.Module):
    """BN-LReLU-C(out,3,stride)-BN-LReLU-C(out,3) plus a shortcut (1x1 projection where the width
    or resolution changes). ``activate_before_residual``: the shortcut sees BN-LReLU(x), not x."""

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool, bn_momentum: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum, eps=1e-3)
        self.act1 = nn.LeakyReLU(LEAKY_SLOPE)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum, eps=1e-3)
        self.act2 = nn.LeakyReLU(LEAKY_SLOPE)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                         if c_in != c_out or stride != 1 else None)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        if self.activate_before_residual:
            x = activated
        out = self.conv2(self.act2(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` with pre-activation blocks, embedding = GAP of BN-LReLU of the last stage."""

    def __init__(self, in_channels: int, depth: int = 28, widen_factor: int = 2, bn_momentum: float = 0.001,
                 input_noise: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.noise = GaussianNoise(input_noise)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        for s in range(3):
            blocks = [PreActBlock(widths[s] if b == 0 else widths[s + 1], widths[s + 1],
                                  (1 if s == 0 else 2) if b == 0 else 1,
                                  activate_before_residual=(s == 0 and b == 0), bn_momentum=bn_momentum)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum, eps=1e-3)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.embedding_dim = widths[3]
        _init_conv_bn(self, mode="fan_out", nonlinearity="leaky_relu")

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stage1``..``stage3`` (the residual sums) and ``embedding``."""
        out = {}
        x = self.stem(self.noise(x))
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            out[f"stage{i}"] = x
        out["embedding"] = self.act(self.bn(x)).mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.named_features(x)["embedding"]


def wrn28_2(input_shape, depth: int = 28, widen_factor: int = 2, bn_momentum: float = 0.001,
            input_noise: float = 0.0) -> WideResNet:
    """WRN-28-2 (Oliver et al. 2018; FixMatch): pre-activation wide ResNet, leaky ReLU 0.1, BN momentum 0.001.

    ``depth`` = 6n + 4 (n blocks per stage), ``widen_factor`` k (stage widths 16k, 32k, 64k;
    embedding 64k); ``input_noise``: std of training-mode Gaussian input noise (Oliver et al.'s
    CIFAR-10 runs: 0.15; FixMatch: 0)."""
    c, _, _ = _channels("wrn28_2", input_shape)
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"backbones.wrn28_2.depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    _check_positive("wrn28_2", "widen_factor", widen_factor)
    _check_range("wrn28_2", "bn_momentum", bn_momentum, 0.0, 1.0)
    _check_range("wrn28_2", "input_noise", input_noise, 0.0, math.inf, high_open=True)
    return WideResNet(c, depth, widen_factor, bn_momentum, input_noise)


# ------------------------------------------------------------------------------------ conv-large
def _conv_bn_lrelu(c_in: int, c_out: int, kernel: int, padding: int, bn_momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.LeakyReLU(LEAKY_SLOPE)]


CONVNET13_MIN_SIZE = 12  # 12 -> 6 -> 3 -> 1 (valid 3x3)


def _convnet13_map(n: int) -> int:
    """Spatial size after the two pools and the valid 3x3 convolution."""
    return n // 2 // 2 - 2


class ConvNet13(nn.Module):
    """Laine & Aila's conv-large: noise, 3 x C(128,3), pool, dropout, 3 x C(256,3), pool, dropout,
    C(512,3,valid), C(256,1), C(embedding_dim,1), GAP; every C with BN and leaky ReLU 0.1. With
    ``width`` w the widths are w, 2w, 4w, 2w (the paper's w = 128)."""

    def __init__(self, in_channels: int, input_noise: float = 0.15, dropout: float = 0.5, embedding_dim: int = 128,
                 bn_momentum: float = 0.001, width: int = 128):
        super().__init__()
        m, w = bn_momentum, width
        self.noise = GaussianNoise(input_noise)
        self.block1 = nn.Sequential(*_conv_bn_lrelu(in_channels, w, 3, 1, m), *_conv_bn_lrelu(w, w, 3, 1, m),
                                    *_conv_bn_lrelu(w, w, 3, 1, m), nn.MaxPool2d(2, 2), nn.Dropout(dropout))
        self.block2 = nn.Sequential(*_conv_bn_lrelu(w, 2 * w, 3, 1, m), *_conv_bn_lrelu(2 * w, 2 * w, 3, 1, m),
                                    *_conv_bn_lrelu(2 * w, 2 * w, 3, 1, m), nn.MaxPool2d(2, 2), nn.Dropout(dropout))
        self.block3 = nn.Sequential(*_conv_bn_lrelu(2 * w, 4 * w, 3, 0, m), *_conv_bn_lrelu(4 * w, 2 * w, 1, 0, m),
                                    *_conv_bn_lrelu(2 * w, embedding_dim, 1, 0, m))
        self.embedding_dim = embedding_dim
        _init_conv_bn(self, mode="fan_in", nonlinearity="relu")

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stage1`` (after pool 1 and dropout), ``stage2``, ``stage3`` (the last 1x1 conv's map) and ``embedding``."""
        h, w = x.shape[-2:]
        if _convnet13_map(h) < 1 or _convnet13_map(w) < 1:
            raise UserError(_too_small_message(x.shape[-3], h, w))
        out = {}
        x = self.block1(self.noise(x))
        out["stage1"] = x
        x = self.block2(x)
        out["stage2"] = x
        x = self.block3(x)
        out["stage3"] = x
        out["embedding"] = x.mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.named_features(x)["embedding"]


def _too_small_message(c: int, h: int, w: int) -> str:
    return (f"convnet13: input {c}x{h}x{w} is too small: after the two 2x2 max-pools "
            f"({h}x{w} -> {h // 2 // 2}x{w // 2 // 2}) the 3x3 'valid' convolution C(512,3) needs at least 3x3; "
            f"inputs must be at least {CONVNET13_MIN_SIZE}x{CONVNET13_MIN_SIZE}")


#: declared with ``since`` so that convnet13 runs at the paper's width keep their ids
CONVNET13_WIDTH = hyperparameter(128, since="0.2")


def convnet13(input_shape, input_noise: float = 0.15, dropout: float = 0.5, embedding_dim: int = 128,
              bn_momentum: float = 0.001, width: int = CONVNET13_WIDTH) -> ConvNet13:
    """The 13-layer "conv-large" of Laine & Aila 2017 (Table 5) / Mean Teacher; inputs at least 12x12.

    ``input_noise``: std of the training-mode Gaussian input noise (paper: 0.15);
    ``dropout``: the two dropout layers' rate (paper: 0.5); ``embedding_dim``: width of the last
    1x1 convolution (paper: 128); ``width``: the first block's width w, the others 2w and 4w
    (paper: 128; smaller only to make smoke runs cheap)."""
    c, h, w = _channels("convnet13", input_shape)
    if _convnet13_map(h) < 1 or _convnet13_map(w) < 1:
        raise UserError(_too_small_message(c, h, w))
    _check_range("convnet13", "input_noise", input_noise, 0.0, math.inf, high_open=True)
    _check_range("convnet13", "dropout", dropout, 0.0, 1.0, high_open=True)
    _check_positive("convnet13", "embedding_dim", embedding_dim)
    _check_range("convnet13", "bn_momentum", bn_momentum, 0.0, 1.0)
    width = 128 if width is CONVNET13_WIDTH else width  # called directly, not through a grid
    _check_positive("convnet13", "width", width)
    return ConvNet13(c, input_noise, dropout, embedding_dim, bn_momentum, width)


# ------------------------------------------------------------------------------------ Shake-Shake
class ShakeShake(torch.autograd.Function):
    """``alpha * a + (1 - alpha) * b`` forward; backward ``beta * g`` to a and ``(1 - beta) * g`` to b.

    ``alpha`` and ``beta`` broadcast against a and b (N x 1 x 1 x 1 for per-sample coefficients);
    they get no gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(beta)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (beta,) = ctx.saved_tensors
        grad_a = grad * beta if ctx.needs_input_grad[0] else None
        grad_b = grad * (1 - beta) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


def shake_shake(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    """Training: per-sample alpha, beta ~ U(0, 1) (``torch.rand``, the global generator, alpha
    first), through :class:`ShakeShake`. Eval: ``0.5 * (a + b)``."""
    if not training:
        return 0.5 * (a + b)
    shape = (a.shape[0],) + (1,) * (a.dim() - 1)
    alpha = torch.rand(shape, device=a.device).to(a.dtype)
    beta = torch.rand(shape, device=a.device).to(a.dtype)
    return ShakeShake.apply(a, b, alpha, beta)


class ShiftConvDownsample(nn.Module):
    """Stride-2 shortcut: ReLU of [x at even positions, x at odd positions] (channels concatenated),
    grouped 1x1 conv (2 groups, each in -> out/2), BN. Odd sizes: the odd-position half is
    zero-padded at the bottom/right so both halves have ceil(H/2) x ceil(W/2)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        if c_out % 2:
            raise UserError(f"shake_resnet26: a shift-conv shortcut needs an even output width, got {c_out}")
        self.conv = nn.Conv2d(2 * c_in, c_out, 1, groups=2)
        self.bn = nn.BatchNorm2d(c_out, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even = x[:, :, 0::2, 0::2]
        odd = F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2]
        return self.bn(self.conv(F.relu(torch.cat([even, odd], dim=1))))


def _shake_branch(c_in: int, c_out: int, stride: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out, momentum=bn_momentum))


class ShakeShakeBlock(nn.Module):
    """shortcut(x) + shake(branch1(x), branch2(x)); each branch ReLU-C(3,stride)-BN-ReLU-C(3)-BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn_momentum: float):
        super().__init__()
        self.branch1 = _shake_branch(c_in, c_out, stride, bn_momentum)
        self.branch2 = _shake_branch(c_in, c_out, stride, bn_momentum)
        if stride != 1:
            self.shortcut: nn.Module = ShiftConvDownsample(c_in, c_out, bn_momentum)
        elif c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                          nn.BatchNorm2d(c_out, momentum=bn_momentum))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + shake_shake(self.branch1(x), self.branch2(x), self.training)


class ShakeResNet(nn.Module):
    """Mean Teacher's ResNet32x32 with Shake-Shake blocks: stem C(16,3), stages of width w, 2w, 4w, GAP."""

    def __init__(self, in_channels: int, depth: int = 26, width: int = 96, bn_momentum: float = 0.1):
        super().__init__()
        n = (depth - 2) // 6
        widths = [16, width, 2 * width, 4 * width]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            nn.Sequential(*[ShakeShakeBlock(widths[s] if b == 0 else widths[s + 1], widths[s + 1],
                                            (1 if s == 0 else 2) if b == 0 else 1, bn_momentum) for b in range(n)])
            for s in range(3))
        self.embedding_dim = widths[3]
        _init_conv_bn(self, mode="fan_out", nonlinearity="relu")

    def named_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stage1``..``stage3`` and ``embedding`` (GAP of stage 3, no final ReLU)."""
        out = {}
        x = self.stem(x)
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            out[f"stage{i}"] = x
        out["embedding"] = x.mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.named_features(x)["embedding"]


def shake_resnet26(input_shape, depth: int = 26, width: int = 96, bn_momentum: float = 0.1) -> ShakeResNet:
    """Mean Teacher's CIFAR ResNet-26 2x96d Shake-Shake (Gastaldi 2017): ~26.2M parameters.

    ``depth`` = 6n + 2 (n blocks per stage), ``width``: first stage's width (Gastaldi's 2x32d,
    2x64d, 2x96d; even), embedding 4 * width."""
    c, _, _ = _channels("shake_resnet26", input_shape)
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"backbones.shake_resnet26.depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, ...), got {depth}")
    _check_positive("shake_resnet26", "width", width)
    if width % 2:
        raise UserError("backbones.shake_resnet26.width must be even (the shift-conv shortcut splits it in two), "
                        f"got {width}")
    _check_range("shake_resnet26", "bn_momentum", bn_momentum, 0.0, 1.0)
    return ShakeResNet(c, depth, width, bn_momentum)


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("wrn28_2", wrn28_2, "WRN-28-2 (Oliver et al. 2018, FixMatch): pre-activation wide ResNet, "
                 "leaky ReLU 0.1, BN momentum 0.001, embedding 128; 1.47M parameters with a 10-way head"),
        Backbone("convnet13", convnet13, "13-layer conv-large (Laine & Aila 2017, Mean Teacher): "
                 "N(0.15)-C(128,3)x3-P-D(0.5)-C(256,3)x3-P-D(0.5)-C(512,3,valid)-C(256,1)-C(128,1)-GAP, BN, "
                 "leaky ReLU 0.1; inputs >= 12x12"),
        Backbone("shake_resnet26", shake_resnet26, "ResNet-26 2x96d Shake-Shake (Gastaldi 2017, Mean Teacher): "
                 "embedding 384, 26.2M parameters"),
    ]
