"""Batched image augmentation on the training device, for the LbA paper's SVHN and STL-10 runs.

Every function takes a float batch ``x`` (N x C x H x W, values in [0, 1]) on any device and
returns a new batch of the same shape, dtype and device, values in [0, 1]. All per-sample
parameters are drawn at once as tensors (``torch.rand(..., generator=generator,
device=x.device)``); images are transformed by whole-batch tensor ops (``affine_grid`` +
``grid_sample``, shifted sums, colour-space arithmetic): no per-sample Python, no PIL, no
host round trip. The number of random draws never depends on the data or the magnitudes, so a
generator seeded the same way gives the same output on the same device.

The presets are the data sets' ``ImageDataset.augment`` (``augment(x, generator)``), used when
a run sets ``augment = true``:

``svhn_augment`` -- LbA §4.3: "random affine transformations and Gaussian blurring". Per sample:
  rotation U(-10°, 10°), isotropic scale U(0.85, 1.15), shear U(-10°, 10°), translation
  U(-3.5, 3.5) px on each axis (all about the image centre, reflection at the borders); then,
  with probability 0.5, a Gaussian blur with sigma U(0.5, 1.4) px (radius 5 px).
``stl10_augment`` -- LbA §4.2: "random cropping, changes in brightness, saturation, hue and small
  rotations". Per sample: a square crop of U(0.8, 1.0) of the side at a uniform position,
  resized back to the full size (bilinear), and a rotation U(-10°, 10°) -- both done in one
  resampling, reflection at the borders; then brightness x U(0.7, 1.3), saturation
  x U(0.5, 1.2), hue + U(-0.1, 0.1) turns (±36°), in that order.

The paper gives no parameters (notes/association.md §1: "Parameters are not given"; the notes
list only which transforms each data set uses, and ADC's tau -- crop + flip, noise, small
rotations, brightness/saturation/hue -- for the related clustering work). The values above
follow the authors' public TensorFlow code (github.com/haeusser/learning_by_association,
``semisup/train.py`` and ``semisup/tools/stl10.py``), re-expressed where it is unusable as is:

- SVHN, reference: per image, the 2x2 part of the affine map is I + 0.15 N(0, 1) per entry and
  the translation 2 N(0, 1) px, with a wrap or reflect border chosen at random; with
  probability 0.5 a 7x7 Gaussian blur (OpenCV's default sigma for 7x7: 1.4). Ours draws
  interpretable parameters with about the same spread (the reference's rotation, scale and
  shear components each have a std of 0.15 / sqrt(2) ~ 0.11, i.e. ~6° and ~11 %; a uniform
  U(-a, a) has std a / sqrt(3)), reflects at every border (grid_sample has no wrap mode), and
  draws the blur's sigma per sample from U(0.5, 1.4).
- STL-10, reference: ``max_crop_percentage`` 0.2 (crop (1 - U(0, 0.2)) of the side, resized back
  with nearest neighbour), ``max_rotate_angle`` 10 (black corners), ``saturation`` [0.5, 1.2],
  ``hue_max_delta`` 0.1 (tf.image units: a fraction of the hue circle), ``brightness_max_delta``
  1.3 (an additive delta for tf.image; on the reference's 0-255 images that is ±0.5 %, a no-op,
  and on [0, 1] images it would saturate everything, so we read it as a multiplicative factor
  up to 1.3 and use U(0.7, 1.3)), ``gray_prob`` 0.5 and a random left-right flip. The colour
  branch of that public code raises NotImplementedError before it is reached. We keep the
  paper's list: no grayscale conversion, no flip. We use bilinear resizing and reflection
  instead of nearest neighbour and black corners.

Colour operations follow torchvision's definitions: brightness multiplies; saturation blends
with the luminance grey 0.299 R + 0.587 G + 0.114 B (ITU-R 601; so saturation 0 gives that grey,
where tf.image's HSV scaling would give max(R, G, B)); hue shifts H in HSV space, computed
exactly in tensor ops (``rgb_to_hsv`` / ``hsv_to_rgb``), not by a YIQ rotation. Results are
clamped to [0, 1]. Saturation and hue act only on 3-channel images; on any other channel count
they are the identity (a grey image has no colour to change), and brightness is applied as is.

Geometry: an image's pixel (row i, column j) has centred coordinates x = j - (W - 1) / 2,
y = i - (H - 1) / 2 (x right, y down). ``affine`` moves the content by the forward map
p -> R(rotation) Sh(shear) S(scale) p + t (positive rotation is clockwise on screen, because y
points down; shear is a horizontal shear x += tan(shear) y), sampling the input bilinearly at the
inverse map of every output pixel (``grid_sample``, ``align_corners=False``), so a translation by
a whole number of pixels moves pixels exactly.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Scalar = Union[float, Tensor]  # a float for the whole batch, or a tensor of N per-sample values

# ---- presets' parameters (see the module docstring for where they come from) ----------------------
SVHN_ROTATION_DEG = 10.0
SVHN_SCALE = (0.85, 1.15)
SVHN_SHEAR_DEG = 10.0
SVHN_TRANSLATE_PX = 3.5
SVHN_BLUR_P = 0.5
SVHN_BLUR_SIGMA = (0.5, 1.4)

STL10_CROP_FRACTION = (0.8, 1.0)
STL10_ROTATION_DEG = 10.0
STL10_BRIGHTNESS = (0.7, 1.3)
STL10_SATURATION = (0.5, 1.2)
STL10_HUE_TURNS = 0.1

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


def _check(x: Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augmentation expects a float N x C x H x W batch, got {x.dtype} {tuple(x.shape)}")


def _per_sample(value: Scalar, x: Tensor) -> Tensor:
    """``value`` as a length-N tensor on x's device and dtype."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _uniform(x: Tensor, generator: torch.Generator, low: float, high: float) -> Tensor:
    """N per-sample draws from U(low, high); always draws, even when low == high."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


def _symmetric(x: Tensor, generator: torch.Generator, magnitude: float) -> Tensor:
    return _uniform(x, generator, -magnitude, magnitude)


# ---- geometry ---------------------------------------------------------------------------------------

def _homogeneous(linear: Tensor, shift: Tensor) -> Tensor:
    """N x 3 x 3 from N x 2 x 2 and N x 2."""
    out = torch.zeros(linear.shape[0], 3, 3, dtype=linear.dtype, device=linear.device)
    out[:, :2, :2] = linear
    out[:, :2, 2] = shift
    out[:, 2, 2] = 1
    return out


def _affine_sampling(x: Tensor, rotation: Scalar, scale: Scalar, shear: Scalar,
                     translate_x: Scalar, translate_y: Scalar) -> Tensor:
    """The sampling map (output -> input centred pixel coordinates, N x 3 x 3) of the forward
    transform p -> R(rotation) Sh(shear) S(scale) p + t; angles in degrees."""
    theta = torch.deg2rad(_per_sample(rotation, x))
    s = _per_sample(scale, x)
    k = torch.tan(torch.deg2rad(_per_sample(shear, x)))
    t = torch.stack([_per_sample(translate_x, x), _per_sample(translate_y, x)], dim=1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # forward linear part M = R Sh S = s * [[cos, cos*k - sin], [sin, sin*k + cos]], det = s^2
    a, b, c, d = s * cos, s * (cos * k - sin), s * sin, s * (sin * k + cos)
    det = a * d - b * c
    inverse = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / det[:, None, None]
    return _homogeneous(inverse, -(inverse @ t[:, :, None])[:, :, 0])


def _crop_sampling(x: Tensor, fraction: Scalar, centre_x: Scalar, centre_y: Scalar) -> Tensor:
    """The sampling map of "crop a square of ``fraction`` of the side centred at (centre_x,
    centre_y) (centred pixel coordinates) and resize it to the full image"."""
    f = _per_sample(fraction, x)
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    return _homogeneous(f[:, None, None] * eye, torch.stack([_per_sample(centre_x, x), _per_sample(centre_y, x)], 1))


def warp(x: Tensor, sampling: Tensor, padding_mode: str = "reflection") -> Tensor:
    """Resample every image of ``x`` at ``sampling`` (N x 3 x 3 or N x 2 x 3: output -> input,
    centred pixel coordinates), bilinearly, in one ``grid_sample`` call."""
    _check(x)
    n, _, height, width = x.shape
    if n == 0:
        return x.clone()
    # normalised coordinates (align_corners=False): u = x / (W / 2), v = y / (H / 2);
    # theta = D^-1 A D and D^-1 t with D = diag(W / 2, H / 2)
    half = torch.tensor([width / 2, height / 2], dtype=x.dtype, device=x.device)
    theta = torch.cat([sampling[:, :2, :2] * half[None, None, :] / half[None, :, None],
                       sampling[:, :2, 2:] / half[None, :, None]], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.clamp_(0.0, 1.0)


def affine(x: Tensor, *, rotation: Scalar = 0.0, scale: Scalar = 1.0, shear: Scalar = 0.0,
           translate_x: Scalar = 0.0, translate_y: Scalar = 0.0, padding_mode: str = "reflection") -> Tensor:
    """Per-sample affine transform about the image centre (degrees, scale factor, pixels):
    content moves by p -> R(rotation) Sh(shear) S(scale) p + (translate_x, translate_y)."""
    _check(x)
    return warp(x, _affine_sampling(x, rotation, scale, shear, translate_x, translate_y), padding_mode)


def random_affine(x: Tensor, generator: torch.Generator, *, rotation: float = 0.0,
                  scale: Sequence[float] = (1.0, 1.0), shear: float = 0.0, translate: float = 0.0,
                  padding_mode: str = "reflection") -> Tensor:
    """``affine`` with per-sample rotation U(-rotation, rotation) degrees, scale U(*scale),
    shear U(-shear, shear) degrees and translation U(-translate, translate) px on each axis."""
    _check(x)
    r = _symmetric(x, generator, rotation)
    s = _uniform(x, generator, *scale)
    k = _symmetric(x, generator, shear)
    tx, ty = _symmetric(x, generator, translate), _symmetric(x, generator, translate)
    return affine(x, rotation=r, scale=s, shear=k, translate_x=tx, translate_y=ty, padding_mode=padding_mode)


def _random_crop_sampling(x: Tensor, generator: torch.Generator, fraction: Sequence[float]) -> Tensor:
    f = _uniform(x, generator, *fraction)
    _, _, height, width = x.shape
    # the crop stays inside the image: its centre moves at most (1 - f) * size / 2
    cx = (1 - f) * (width / 2) * _symmetric(x, generator, 1.0)
    cy = (1 - f) * (height / 2) * _symmetric(x, generator, 1.0)
    return _crop_sampling(x, f, cx, cy)


def random_crop(x: Tensor, generator: torch.Generator, fraction: Sequence[float] = STL10_CROP_FRACTION) -> Tensor:
    """Per sample: a square crop of U(*fraction) of each side at a uniform position inside the
    image, resized back to H x W (bilinear)."""
    _check(x)
    return warp(x, _random_crop_sampling(x, generator, fraction))


# ---- blur -------------------------------------------------------------------------------------------

def gaussian_blur(x: Tensor, sigma: Scalar, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (pixels; 0 leaves the image as is),
    kernel taps -radius..radius (default ceil(3 * max sigma)), borders reflected (replicated
    when the image is smaller than the radius). Each 1-D pass is a sum of 2 * radius + 1
    shifted copies of the whole batch, weighted per sample."""
    _check(x)
    sigma = _per_sample(sigma, x)
    if radius is None:
        radius = max(1, math.ceil(3 * float(sigma.max()))) if len(sigma) else 1
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets[None, :] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)          # N x (2r + 1), rows sum to 1
    mode = "reflect" if radius < min(x.shape[2], x.shape[3]) else "replicate"

    def one_pass(img: Tensor, dim: int) -> Tensor:
        size = img.shape[dim]
        padded = F.pad(img, (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius), mode=mode)
        out = torch.zeros_like(img)
        for tap in range(2 * radius + 1):                      # over kernel taps, not samples
            out += kernel[:, tap, None, None, None] * padded.narrow(dim, tap, size)
        return out

    return one_pass(one_pass(x, 3), 2).clamp_(0.0, 1.0)


def random_gaussian_blur(x: Tensor, generator: torch.Generator, sigma: Sequence[float] = SVHN_BLUR_SIGMA,
                         p: float = SVHN_BLUR_P) -> Tensor:
    """With probability ``p`` per sample, a Gaussian blur with sigma U(*sigma); else unchanged."""
    _check(x)
    s = _uniform(x, generator, *sigma)
    apply = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    radius = max(1, math.ceil(3 * max(sigma)))
    return gaussian_blur(x, torch.where(apply, s, torch.zeros_like(s)), radius)


# ---- colour -----------------------------------------------------------------------------------------

def rgb_to_hsv(x: Tensor) -> Tensor:
    """N x 3 x H x W RGB in [0, 1] -> HSV, all three in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, torch.remainder((g - b) / safe, 6.0),
                      torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) / 6.0
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of ``rgb_to_hsv``: channel n in (R, G, B) = V - V S clamp(min(k, 4 - k), 0, 1),
    k = (n' + 6 H) mod 6 with n' = 5, 3, 1."""
    h, s, v = x.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h[:, None], 6.0)
    return v[:, None] - (v * s)[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Scalar) -> Tensor:
    """Multiply by a per-sample ``factor`` (1: unchanged), clamped to [0, 1]; any channel count."""
    _check(x)
    return (x * _per_sample(factor, x)[:, None, None, None]).clamp_(0.0, 1.0)


def grey(x: Tensor) -> Tensor:
    """Luminance 0.299 R + 0.587 G + 0.114 B, N x 1 x H x W (RGB input)."""
    return torch.tensordot(torch.tensor(LUMA, dtype=x.dtype, device=x.device), x, dims=([0], [1])).unsqueeze(1)


def adjust_saturation(x: Tensor, factor: Scalar) -> Tensor:
    """Blend with the luminance grey: grey + factor * (x - grey) (0: grey, 1: unchanged),
    clamped; the identity unless C == 3."""
    _check(x)
    if x.shape[1] != 3:
        return x.clone()
    g = grey(x)
    return (g + _per_sample(factor, x)[:, None, None, None] * (x - g)).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Scalar) -> Tensor:
    """Rotate the HSV hue by ``shift`` turns per sample (1 turn = 360°); the identity unless C == 3."""
    _check(x)
    if x.shape[1] != 3:
        return x.clone()
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + _per_sample(shift, x)[:, None, None], 1.0)
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1)).clamp_(0.0, 1.0)


def random_color_jitter(x: Tensor, generator: torch.Generator, *, brightness: Sequence[float] = (1.0, 1.0),
                        saturation: Sequence[float] = (1.0, 1.0), hue: float = 0.0) -> Tensor:
    """Per sample, in this order: brightness x U(*brightness), saturation x U(*saturation),
    hue + U(-hue, hue) turns. The draws are made for any channel count (same random stream)."""
    _check(x)
    b = _uniform(x, generator, *brightness)
    s = _uniform(x, generator, *saturation)
    h = _symmetric(x, generator, hue)
    return adjust_hue(adjust_saturation(adjust_brightness(x, b), s), h)


# ---- presets ----------------------------------------------------------------------------------------

def svhn_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """LbA §4.3 SVHN: random affine (rotation ±10°, scale 0.85-1.15, shear ±10°, translation
    ±3.5 px) then, with probability 0.5, Gaussian blur with sigma U(0.5, 1.4) px."""
    x = random_affine(x, generator, rotation=SVHN_ROTATION_DEG, scale=SVHN_SCALE, shear=SVHN_SHEAR_DEG,
                      translate=SVHN_TRANSLATE_PX)
    return random_gaussian_blur(x, generator, sigma=SVHN_BLUR_SIGMA, p=SVHN_BLUR_P)


def stl10_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """LbA §4.2 STL-10: random square crop of 80-100 % of the side resized back, rotation ±10°
    (one resampling), then brightness x U(0.7, 1.3), saturation x U(0.5, 1.2), hue ±0.1 turns."""
    _check(x)
    crop = _random_crop_sampling(x, generator, STL10_CROP_FRACTION)
    rotation = _affine_sampling(x, _symmetric(x, generator, STL10_ROTATION_DEG), 1.0, 0.0, 0.0, 0.0)
    # rotate the whole image, then crop the rotated image: output -> crop -> un-rotate -> input
    x = warp(x, rotation @ crop)
    return random_color_jitter(x, generator, brightness=STL10_BRIGHTNESS, saturation=STL10_SATURATION,
                               hue=STL10_HUE_TURNS)
