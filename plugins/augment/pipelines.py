"""The standard augmentation pipelines of semi-supervised learning, as batched plugins.

Pipelines (hook ``ssl_bench_augmentations``; ``apply(x, generator)`` on a float batch
N x C x H x W in [0, 1] on the training device, see ``ssl_bench/views.py``):

``flip``
  horizontal flip with probability 0.5 per sample.
``translate``
  integer translation by pad-and-crop with reflect padding: per sample and axis a shift drawn
  uniformly from {-p, ..., p}, p = round(0.125 * side) (4 px at 32 x 32, 12 px at 96 x 96).
``flip_translate``
  ``flip`` then ``translate``: the "weak" augmentation of MixMatch (Berthelot et al. 2019) and
  FixMatch (Sohn et al. 2020, §2.3: "a standard flip-and-shift augmentation strategy ... randomly
  horizontally flipping images with probability 50% ... randomly translating images by up to
  12.5% vertically and horizontally"). The view alias ``weak``.
``cutout``
  Cutout (DeVries & Taylor 2017): one square hole per sample, side round(0.5 * min(H, W))
  (16 px at 32 x 32), centre uniform over the pixels, clipped at the borders, filled with grey 0.5.
``randaugment``
  FixMatch's RandAugment variant (Cubuk et al. 2020, as modified in FixMatch §2.3 and Appendix
  D / Table 12): per sample, N = 2 rounds, each applying one op drawn uniformly (with
  replacement) from the 14 below, with its magnitude drawn uniformly at random per op and sample
  (FixMatch's change: no global magnitude M to tune).
``randaugment_cutout``
  ``randaugment`` then ``cutout``: FixMatch's "strong" augmentation. The view alias ``strong``.

Where the parameters come from, and where we deviate
------------------------------------------------------

Translation (``translate``): FixMatch's code (github.com/google-research/fixmatch,
``libml/augment.py``: ``augment_shift``) pads by w = 4 px with ``REFLECT`` and takes a random
crop, i.e. shifts uniform over {-w, ..., w}; its STL-10 setting uses w = 12 (96 px images),
which is 12.5 % of the side as here. Reflect is PyTorch's / TensorFlow's ``reflect`` (the edge
pixel is not repeated). Mean Teacher (Tarvainen & Valpola 2017) and Laine & Aila (2017, Π-model
/ temporal ensembling) use flips and translations by up to 2 px (``random_translate(x, g,
max_shift=2)``; not a registered pipeline).

RandAugment ops and magnitude ranges (FixMatch, Table 12), each magnitude drawn U(low, high)
per op and sample (Posterize: a whole number of bits uniform over {4, ..., 8}):

======================  =====================================================  ==============
op                      what it does                                           range
======================  =====================================================  ==============
AutoContrast            per channel, stretch [min, max] to [0, 1]; blend with  λ in [0, 1]
                        the input by λ (0: input, 1: fully autocontrasted)
Brightness              x * B (PIL: blend with black)                          B in [0.05, 0.95]
Color                   blend with the luminance grey (ops.adjust_saturation)  C in [0.05, 0.95]
Contrast                blend with the mean luminance (a flat grey)            C in [0.05, 0.95]
Equalize                per-channel histogram equalisation on 256 levels (as   λ in [0, 1]
                        PIL.ImageOps.equalize), blended by λ
Identity                the input
Posterize               keep the top B bits of each 8-bit level                B in {4..8}
Rotate                  rotation by θ degrees about the centre                 θ in [-30, 30]
Sharpness               blend with PIL's SMOOTH-filtered image (borders kept)  S in [0.05, 0.95]
ShearX                  x += R * y about the centre                            R in [-0.3, 0.3]
ShearY                  y += R * x about the centre                            R in [-0.3, 0.3]
Solarize                invert every value >= T (PIL: ``i >= threshold``)       T in [0, 1]
TranslateX              move right by λ * W px (λ < 0: left)                   λ in [-0.3, 0.3]
TranslateY              move down by λ * H px                                  λ in [-0.3, 0.3]
======================  =====================================================  ==============

Deviations from FixMatch's public TensorFlow code (``AugmentPoolRAMC`` with
``third_party/auto_augment/augmentations.py``), which differs from its own paper's table:

- The code draws an integer level 1..9 of 10 per op and applies each op with probability 0.5;
  we follow the paper (continuous magnitudes from Table 12, every drawn op applied; Identity is
  in the list, so some samples still come out unchanged).
- The code's Brightness/Color/Contrast/Sharpness factors span [0.1, 1.9] and its AutoContrast and
  Equalize are not blended; we use the table's [0.05, 0.95] and λ blends.
- Geometry: the code uses PIL's nearest-neighbour ``transform``/``rotate`` with shears about the
  top-left corner and integer translations; we resample bilinearly (``ops.warp``), shear about
  the centre and translate by fractional pixels. Areas uncovered by Rotate/Shear/Translate are
  filled with grey 0.5, which is what the code produces (its ``pil_unwrap`` maps the transparent
  fill to 0 in [-1, 1] space, i.e. mid-grey; kekmodel's PyTorch port fills (128, 128, 128)).
- Cutout: the code's ``cutout_numpy`` uses a fixed 16 px hole on 32 px images (half the side)
  and multiplies [-1, 1] images by 0, i.e. grey 0.5; its hole is ``[c - 8, c + 8)`` around a
  uniform pixel centre c, clipped. We do the same (side round(0.5 * min(H, W)), the hole
  ``[c - side // 2, c - side // 2 + side)``). The paper's Table 12 also lists Cutout with a
  random side in [0, 0.5] of the image (the CTAugment setting); ``random_cutout(x, g,
  fraction=...)`` takes a fixed fraction only.

Colour ops on 8-bit levels (Equalize, Posterize) quantise to round(255 x) first, as PIL works on
uint8 images; on images already on that grid they match PIL exactly (see the tests). Contrast
uses the float mean luminance (PIL rounds it to a whole level). On grey images (C = 1) Color is
the identity and Contrast uses the channel itself as the luminance.

Batching: every random parameter is drawn up front as a tensor from ``generator`` on the batch's
device, and the number of draws depends only on the batch size (never on the data or the ops
drawn), so a generator seeded the same way reproduces the output. RandAugment draws, per round,
an op index and a magnitude in [0, 1) per sample, then (strategy ``"select"``, the default)
groups the samples by op with one ``argsort`` and applies each op once to the samples that drew
it (one host sync per round for the group sizes), all five geometric ops in one ``grid_sample``;
strategy ``"all"`` computes every op on the whole batch and selects per sample (no host sync,
about 10x the arithmetic). ``"select"`` is the faster on a CPU at 64 x 3 x 32 x 32
(benchmarks/perf/RESULTS.md, "Augmentation: hand-written vs kornia").
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_bench.hookspecs import hookimpl
from ssl_bench.views import Augmentation
from ssl_bench_plugins.augment import ops

Scalar = Union[float, int, Tensor]  # one value for the whole batch, or N per-sample values

FLIP_P = 0.5
TRANSLATE_FRACTION = 0.125
CUTOUT_FRACTION = 0.5
CUTOUT_FILL = 0.5
RANDAUGMENT_N = 2
GEOMETRY_FILL = 0.5


def _check(x: Tensor) -> None:
    ops._check(x)


def side_px(fraction: float, side: int) -> int:
    """round(fraction * side), halves rounded up (0.125 * 28 = 3.5 -> 4)."""
    return int(math.floor(fraction * side + 0.5))


def _per_sample_long(value: Scalar, x: Tensor) -> Tensor:
    v = torch.as_tensor(value, device=x.device)
    if v.is_floating_point():
        v = torch.round(v)
    return v.long().expand(x.shape[0])


def _reflect_index(index: Tensor, size: int) -> Tensor:
    """Map any integer index into [0, size) by reflection without repeating the edge
    (``reflect``: -1 -> 1, size -> size - 2), for any distance outside."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    k = torch.remainder(index, period)
    return torch.where(k >= size, period - k, k)


def _gather_pixels(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]: one ``gather`` for the whole batch."""
    n, c, h, w = x.shape
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


# ---- flip, translate, cutout: deterministic cores ------------------------------------------------

def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Flip left-right the samples where ``mask`` (N booleans) is true."""
    _check(x)
    mask = torch.as_tensor(mask, device=x.device, dtype=torch.bool).expand(x.shape[0])
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def translate_by(x: Tensor, dx: Scalar, dy: Scalar) -> Tensor:
    """Move every sample's content right by ``dx`` and down by ``dy`` whole pixels (per-sample
    integers; negative: left / up), filling the uncovered border by reflection (``reflect``, as
    pad-and-crop with reflect padding by at least |d|)."""
    _check(x)
    n, _, h, w = x.shape
    dx, dy = _per_sample_long(dx, x), _per_sample_long(dy, x)
    rows = _reflect_index(torch.arange(h, device=x.device)[None, :] - dy[:, None], h)
    cols = _reflect_index(torch.arange(w, device=x.device)[None, :] - dx[:, None], w)
    return _gather_pixels(x, rows, cols)


def flip_translate_by(x: Tensor, flip: Tensor, dx: Scalar, dy: Scalar) -> Tensor:
    """``translate_by(flip_where(x, flip), dx, dy)``, in one ``gather``."""
    _check(x)
    n, _, h, w = x.shape
    flip = torch.as_tensor(flip, device=x.device, dtype=torch.bool).expand(n)
    dx, dy = _per_sample_long(dx, x), _per_sample_long(dy, x)
    rows = _reflect_index(torch.arange(h, device=x.device)[None, :] - dy[:, None], h)
    cols = _reflect_index(torch.arange(w, device=x.device)[None, :] - dx[:, None], w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    return _gather_pixels(x, rows, cols)


def cutout_at(x: Tensor, cy: Scalar, cx: Scalar, size: Scalar, fill: float = CUTOUT_FILL) -> Tensor:
    """Set a square of ``size`` px (per sample) to ``fill``: rows
    [cy - size // 2, cy - size // 2 + size), columns likewise around cx, clipped to the image."""
    _check(x)
    _, _, h, w = x.shape
    cy, cx, size = _per_sample_long(cy, x), _per_sample_long(cx, x), _per_sample_long(size, x)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + size)[:, None])          # N x H
    in_cols = (cols >= left[:, None]) & (cols < (left + size)[:, None])        # N x W
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]               # N x 1 x H x W
    return x.masked_fill(hole, fill)


# ---- flip, translate, cutout: draws and random wrappers --------------------------------------------
# Each random wrapper is (draw, then the core); the draw_* functions are public so that a test
# can replay a wrapper's parameters from a same-seeded generator.

def draw_flips(x: Tensor, generator: torch.Generator, p: float = FLIP_P) -> Tensor:
    """N booleans, each true with probability p (one uniform draw per sample)."""
    return torch.rand(x.shape[0], generator=generator, device=x.device) < p


def _max_shifts(x: Tensor, fraction: Optional[float], max_shift: Optional[int]) -> tuple[int, int]:
    if max_shift is not None:
        return int(max_shift), int(max_shift)
    return side_px(fraction, x.shape[3]), side_px(fraction, x.shape[2])


def draw_shifts(x: Tensor, generator: torch.Generator, fraction: float = TRANSLATE_FRACTION,
                max_shift: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """(dx, dy): per sample, uniform integers in [-px, px] with px = round(fraction * W)
    (resp. H), or ``max_shift`` px on both axes when given. dx is drawn first."""
    px, py = _max_shifts(x, fraction, max_shift)
    n = x.shape[0]
    dx = torch.randint(-px, px + 1, (n,), generator=generator, device=x.device)
    dy = torch.randint(-py, py + 1, (n,), generator=generator, device=x.device)
    return dx, dy


def draw_cutout(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(cy, cx): per sample, a uniform pixel (cy drawn first)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator, device=x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=x.device)
    return cy, cx


def random_flip(x: Tensor, generator: torch.Generator, p: float = FLIP_P) -> Tensor:
    """Flip left-right with probability p per sample."""
    _check(x)
    return flip_where(x, draw_flips(x, generator, p))


def random_translate(x: Tensor, generator: torch.Generator, fraction: float = TRANSLATE_FRACTION,
                     max_shift: Optional[int] = None) -> Tensor:
    """Pad-and-crop translation (reflect padding) by uniform whole-pixel shifts up to
    round(fraction * side) px per axis (or ``max_shift`` px, e.g. 2 as Laine & Aila)."""
    _check(x)
    dx, dy = draw_shifts(x, generator, fraction, max_shift)
    return translate_by(x, dx, dy)


def flip_translate(x: Tensor, generator: torch.Generator, p: float = FLIP_P,
                   fraction: float = TRANSLATE_FRACTION, max_shift: Optional[int] = None) -> Tensor:
    """FixMatch's weak augmentation: ``random_flip`` then ``random_translate`` (draws: flips,
    then dx, then dy), done as one gather."""
    _check(x)
    flip = draw_flips(x, generator, p)
    dx, dy = draw_shifts(x, generator, fraction, max_shift)
    return flip_translate_by(x, flip, dx, dy)


def weak_without_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """The weak augmentation of symbols a mirror would change (digits, SVHN): translation by up
    to 12.5% of the side, no flip (FixMatch's code drops the flip for SVHN). Data sets register it
    as their "weak" view (``ImageDataset.pipelines``)."""
    return random_translate(x, generator)


def random_cutout(x: Tensor, generator: torch.Generator, fraction: float = CUTOUT_FRACTION,
                  fill: float = CUTOUT_FILL) -> Tensor:
    """Cutout: one hole of side round(fraction * min(H, W)) at a uniform pixel centre per sample,
    clipped at the borders, filled with ``fill``."""
    _check(x)
    cy, cx = draw_cutout(x, generator)
    return cutout_at(x, cy, cx, side_px(fraction, min(x.shape[2], x.shape[3])), fill)


# ---- RandAugment ops: deterministic cores with per-sample magnitudes ------------------------------

def _column(value: Scalar, x: Tensor) -> Tensor:
    """A per-sample value as N x 1 x 1 x 1 in x's dtype."""
    return ops._per_sample(value, x)[:, None, None, None]


def _blend(x: Tensor, y: Tensor, amount: Scalar) -> Tensor:
    """x + amount * (y - x) (PIL's ``Image.blend(x, y, amount)``), clamped."""
    return (x + _column(amount, x) * (y - x)).clamp_(0.0, 1.0)


def identity(x: Tensor, magnitude: Scalar = 0.0) -> Tensor:
    return x.clone()


def autocontrast(x: Tensor, blend: Scalar = 1.0) -> Tensor:
    """Per sample and channel, map [min, max] linearly onto [0, 1] (a flat channel is left as
    is), then blend with the input by ``blend`` (PIL.ImageOps.autocontrast at blend 1)."""
    _check(x)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    spread = hi - lo
    stretched = torch.where(spread > 0, (x - lo) / torch.where(spread > 0, spread, torch.ones_like(spread)), x)
    return _blend(x, stretched, blend)


def brightness(x: Tensor, factor: Scalar) -> Tensor:
    """x * factor (PIL.ImageEnhance.Brightness)."""
    return ops.adjust_brightness(x, factor)


def color(x: Tensor, factor: Scalar) -> Tensor:
    """Blend with the luminance grey (PIL.ImageEnhance.Color); the identity unless C == 3."""
    return ops.adjust_saturation(x, factor)


def contrast(x: Tensor, factor: Scalar) -> Tensor:
    """Blend with a flat grey at the image's mean luminance (PIL.ImageEnhance.Contrast; C != 3:
    the mean of all channels)."""
    _check(x)
    lum = ops.grey(x) if x.shape[1] == 3 else x
    mean = lum.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + _column(factor, x) * (x - mean)).clamp_(0.0, 1.0)


def _levels(x: Tensor) -> Tensor:
    """The 8-bit level round(255 x) of every value, as int64."""
    return (x * 255).round_().clamp_(0, 255).long()


def equalize(x: Tensor, blend: Scalar = 1.0) -> Tensor:
    """Per sample and channel histogram equalisation on 256 levels, exactly PIL.ImageOps.equalize's
    look-up table (step = (count - count of the highest level present) // 255; level i ->
    (step // 2 + count of levels below i) // step, at most 255; the identity when step = 0),
    then blended with the input by ``blend``. All histograms come from one ``bincount``."""
    _check(x)
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    q = _levels(x).reshape(n * c, h * w)
    rows = n * c
    offsets = torch.arange(rows, device=x.device)[:, None] * 256
    hist = torch.bincount((q + offsets).reshape(-1), minlength=rows * 256).reshape(rows, 256)
    top = hist.gather(1, q.amax(dim=1, keepdim=True)).squeeze(1)             # count of the highest level
    step = (h * w - top) // 255
    below = hist.cumsum(dim=1) - hist                                         # count of lower levels
    lut = ((below + (step // 2)[:, None]) // step.clamp_min(1)[:, None]).clamp_(max=255)
    equalised = (lut.gather(1, q).to(x.dtype) / 255).reshape(n, c, h, w)
    equalised = torch.where((step > 0).reshape(n, c, 1, 1), equalised, x)
    return _blend(x, equalised, blend)


def posterize(x: Tensor, bits: Scalar) -> Tensor:
    """Keep the top ``bits`` (per sample, 1..8) of each 8-bit level round(255 x)
    (PIL.ImageOps.posterize); 8 bits is exactly the identity."""
    _check(x)
    bits = _per_sample_long(bits, x).clamp(1, 8)
    step = torch.pow(2.0, (8 - bits).to(x.dtype))[:, None, None, None]
    q = (x * 255).round().clamp(0, 255)
    posterized = torch.floor(q / step) * step / 255
    return torch.where((bits == 8)[:, None, None, None], x, posterized)


def solarize(x: Tensor, threshold: Scalar) -> Tensor:
    """Invert (1 - x) every value >= ``threshold`` (per sample; PIL.ImageOps.solarize)."""
    _check(x)
    return torch.where(x >= _column(threshold, x), 1.0 - x, x)


def sharpness(x: Tensor, factor: Scalar) -> Tensor:
    """Blend with the image smoothed by PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
    border pixels unsmoothed (PIL.ImageEnhance.Sharpness; 0: smoothed, 1: the input)."""
    _check(x)
    n, c, h, w = x.shape
    smooth = x.clone()
    if h >= 3 and w >= 3:
        box = F.avg_pool2d(x, kernel_size=3, stride=1) * 9                   # 3 x 3 sums, interior
        smooth[:, :, 1:-1, 1:-1] = (box + 4 * x[:, :, 1:-1, 1:-1]) / 13
    return (smooth + _column(factor, x) * (x - smooth)).clamp_(0.0, 1.0)


def _linear_sampling(x: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """The sampling map (output -> input, centred pixel coordinates, N x 3 x 3) of the forward
    map p -> [[a, b], [c, d]] p + t."""
    det = a * d - b * c
    inverse = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / det[:, None, None]
    t = torch.stack([tx, ty], 1)
    return ops._homogeneous(inverse, -(inverse @ t[:, :, None])[:, :, 0])


def rotate_sampling(x: Tensor, degrees: Scalar) -> Tensor:
    return ops._affine_sampling(x, degrees, 1.0, 0.0, 0.0, 0.0)


def shear_x_sampling(x: Tensor, rate: Scalar) -> Tensor:
    r = ops._per_sample(rate, x)
    one, zero = torch.ones_like(r), torch.zeros_like(r)
    return _linear_sampling(x, one, r, zero, one, zero, zero)


def shear_y_sampling(x: Tensor, rate: Scalar) -> Tensor:
    r = ops._per_sample(rate, x)
    one, zero = torch.ones_like(r), torch.zeros_like(r)
    return _linear_sampling(x, one, zero, r, one, zero, zero)


def translate_x_sampling(x: Tensor, fraction: Scalar) -> Tensor:
    return ops._affine_sampling(x, 0.0, 1.0, 0.0, ops._per_sample(fraction, x) * x.shape[3], 0.0)


def translate_y_sampling(x: Tensor, fraction: Scalar) -> Tensor:
    return ops._affine_sampling(x, 0.0, 1.0, 0.0, 0.0, ops._per_sample(fraction, x) * x.shape[2])


def warp_fill(x: Tensor, sampling: Tensor, fill: float = GEOMETRY_FILL) -> Tensor:
    """``ops.warp`` (bilinear) with the area outside the input filled with ``fill``: a channel
    of ones is warped along with zero padding, and fill * (1 - its value) is added, so edge
    pixels blend with the fill exactly as bilinear sampling with a constant border would."""
    _check(x)
    c = x.shape[1]
    if x.shape[0] == 0:
        return x.clone()
    out = ops.warp(torch.cat([x, torch.ones_like(x[:, :1])], dim=1), sampling, padding_mode="zeros")
    return (out[:, :c] + fill * (1.0 - out[:, c:])).clamp_(0.0, 1.0)


def rotate(x: Tensor, degrees: Scalar, fill: float = GEOMETRY_FILL) -> Tensor:
    """Rotate by ``degrees`` about the centre (positive: clockwise on screen, as ``ops.affine``)."""
    return warp_fill(x, rotate_sampling(x, degrees), fill)


def shear_x(x: Tensor, rate: Scalar, fill: float = GEOMETRY_FILL) -> Tensor:
    """Content moves by x += rate * y (centred coordinates, y down)."""
    return warp_fill(x, shear_x_sampling(x, rate), fill)


def shear_y(x: Tensor, rate: Scalar, fill: float = GEOMETRY_FILL) -> Tensor:
    """Content moves by y += rate * x (centred coordinates, x right)."""
    return warp_fill(x, shear_y_sampling(x, rate), fill)


def translate_x(x: Tensor, fraction: Scalar, fill: float = GEOMETRY_FILL) -> Tensor:
    """Move right by fraction * W px (fractional pixels bilinearly)."""
    return warp_fill(x, translate_x_sampling(x, fraction), fill)


def translate_y(x: Tensor, fraction: Scalar, fill: float = GEOMETRY_FILL) -> Tensor:
    """Move down by fraction * H px."""
    return warp_fill(x, translate_y_sampling(x, fraction), fill)


@dataclasses.dataclass(frozen=True)
class RandAugmentOp:
    """One RandAugment op: ``apply(x, magnitude)`` with per-sample magnitudes drawn from
    [low, high] (``integer``: uniform over the whole numbers low..high); a geometric op also has
    ``sampling(x, magnitude)`` so that all geometric ops of a round share one resampling."""

    name: str
    apply: Callable[[Tensor, Tensor], Tensor]
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    sampling: Optional[Callable[[Tensor, Tensor], Tensor]] = None

    def magnitude(self, u: Tensor) -> Tensor:
        """Map uniform draws u in [0, 1) to this op's range."""
        if self.integer:
            return torch.floor(self.low + (self.high - self.low + 1) * u).clamp_(self.low, self.high)
        return self.low + (self.high - self.low) * u


#: FixMatch's RandAugment ops and ranges (Table 12); the order fixes the op indices drawn
RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp("AutoContrast", autocontrast, 0.0, 1.0),
    RandAugmentOp("Brightness", brightness, 0.05, 0.95),
    RandAugmentOp("Color", color, 0.05, 0.95),
    RandAugmentOp("Contrast", contrast, 0.05, 0.95),
    RandAugmentOp("Equalize", equalize, 0.0, 1.0),
    RandAugmentOp("Identity", identity),
    RandAugmentOp("Posterize", posterize, 4, 8, integer=True),
    RandAugmentOp("Rotate", rotate, -30.0, 30.0, sampling=rotate_sampling),
    RandAugmentOp("Sharpness", sharpness, 0.05, 0.95),
    RandAugmentOp("ShearX", shear_x, -0.3, 0.3, sampling=shear_x_sampling),
    RandAugmentOp("ShearY", shear_y, -0.3, 0.3, sampling=shear_y_sampling),
    RandAugmentOp("Solarize", solarize, 0.0, 1.0),
    RandAugmentOp("TranslateX", translate_x, -0.3, 0.3, sampling=translate_x_sampling),
    RandAugmentOp("TranslateY", translate_y, -0.3, 0.3, sampling=translate_y_sampling),
)


def draw_randaugment_round(x: Tensor, generator: torch.Generator,
                           n_ops: int = len(RANDAUGMENT_OPS)) -> tuple[Tensor, Tensor]:
    """One round's draws: (op index uniform over 0..n_ops-1, magnitude u ~ U[0, 1)) per sample,
    the indices first."""
    n = x.shape[0]
    k = torch.randint(0, n_ops, (n,), generator=generator, device=x.device)
    u = torch.rand(n, generator=generator, device=x.device)
    return k, u


def _geometric_sampling(x: Tensor, k: Tensor, u: Tensor, op_list: Sequence[RandAugmentOp]) -> Tensor:
    """Per sample the sampling map of its geometric op (identity for the others)."""
    sampling = torch.eye(3, dtype=x.dtype, device=x.device).expand(x.shape[0], 3, 3)
    for j, op in enumerate(op_list):
        if op.sampling is not None:
            sampling = torch.where((k == j)[:, None, None], op.sampling(x, op.magnitude(u).to(x.dtype)), sampling)
    return sampling


def apply_randaugment_ops(x: Tensor, k: Tensor, u: Tensor, op_list: Sequence[RandAugmentOp] = RANDAUGMENT_OPS,
                          strategy: str = "select", fill: float = GEOMETRY_FILL) -> Tensor:
    """Apply to each sample i the op ``op_list[k[i]]`` at the magnitude it maps u[i] to.

    ``"select"``: group the samples by op (one ``argsort``, one host sync for the group sizes),
    apply each op to its group only and scatter back; the geometric ops share one resampling.
    ``"all"``: every op on the whole batch, then a per-sample selection (no host sync)."""
    _check(x)
    geometric = [j for j, op in enumerate(op_list) if op.sampling is not None]
    if strategy == "all":
        out = x
        for j, op in enumerate(op_list):
            if op.sampling is None:
                out = torch.where((k == j)[:, None, None, None], op.apply(x, op.magnitude(u).to(x.dtype)), out)
        if geometric:
            warped = warp_fill(x, _geometric_sampling(x, k, u, op_list), fill)
            is_geometric = (k[:, None] == torch.tensor(geometric, device=k.device)[None, :]).any(dim=1)
            out = torch.where(is_geometric[:, None, None, None], warped, out)
        return out.clamp(0.0, 1.0)
    if strategy != "select":
        raise ValueError(f"strategy must be 'select' or 'all', got {strategy!r}")
    counts = torch.bincount(k, minlength=len(op_list)).tolist()             # the one host sync
    groups = torch.argsort(k, stable=True).split(counts)
    out = x.clone()
    for j, op in enumerate(op_list):
        idx = groups[j]
        if counts[j] == 0 or op.sampling is not None or op.apply is identity:
            continue
        out.index_copy_(0, idx, op.apply(x.index_select(0, idx), op.magnitude(u.index_select(0, idx)).to(x.dtype)))
    if sum(counts[j] for j in geometric):
        idx = torch.cat([groups[j] for j in geometric])
        xs = x.index_select(0, idx)
        out.index_copy_(0, idx, warp_fill(xs, _geometric_sampling(xs, k.index_select(0, idx),
                                                                  u.index_select(0, idx), op_list), fill))
    return out.clamp_(0.0, 1.0)


def randaugment(x: Tensor, generator: torch.Generator, n: int = RANDAUGMENT_N,
                op_list: Sequence[RandAugmentOp] = RANDAUGMENT_OPS, strategy: str = "select") -> Tensor:
    """FixMatch's RandAugment: ``n`` rounds; in each, every sample applies one op drawn uniformly
    from ``op_list`` at a magnitude drawn uniformly from the op's range."""
    _check(x)
    for _ in range(n):
        k, u = draw_randaugment_round(x, generator, len(op_list))
        x = apply_randaugment_ops(x, k, u, op_list, strategy)
    return x.clone() if n == 0 else x


def randaugment_cutout(x: Tensor, generator: torch.Generator) -> Tensor:
    """FixMatch's strong augmentation: ``randaugment`` then ``random_cutout``."""
    return random_cutout(randaugment(x, generator), generator)


@hookimpl
def ssl_bench_augmentations():
    return [
        Augmentation("flip_translate", flip_translate,
                     "FixMatch's weak augmentation: horizontal flip (p = 0.5), then translation by up to "
                     "12.5% of the side (pad-and-crop, reflect)"),
        Augmentation("cutout", random_cutout,
                     "Cutout: one grey (0.5) square hole of half the side per sample, uniform centre, clipped"),
        Augmentation("randaugment", randaugment,
                     "FixMatch's RandAugment: 2 ops of 14 per sample, random magnitudes (FixMatch Table 12)"),
        Augmentation("randaugment_cutout", randaugment_cutout,
                     "FixMatch's strong augmentation: RandAugment then Cutout"),
        Augmentation("flip", random_flip, "horizontal flip with probability 0.5 per sample"),
        Augmentation("translate", random_translate,
                     "translation by up to 12.5% of the side in whole pixels (pad-and-crop, reflect)"),
    ]
