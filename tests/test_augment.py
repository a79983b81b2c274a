"""Batched augmentation (plugins/augment/ops.py): contracts, hand-checkable cases, the presets."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from conftest import torch_calls

from ssl_bench_plugins.augment import ops as A


def _gen(seed: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _images(n=6, c=3, h=32, w=32, seed=1, dtype=torch.float32) -> torch.Tensor:
    x = torch.rand(n, c, h, w, generator=_gen(seed), dtype=dtype)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0            # the extremes are present
    return x


# every random operation with non-trivial magnitudes, as f(x, generator)
RANDOM_OPS = {
    "random_affine": lambda x, g: A.random_affine(x, g, rotation=20, scale=(0.8, 1.2), shear=10, translate=3),
    "random_crop": lambda x, g: A.random_crop(x, g, (0.6, 0.9)),
    "random_gaussian_blur": lambda x, g: A.random_gaussian_blur(x, g, sigma=(0.5, 2.0), p=1.0),
    "random_color_jitter": lambda x, g: A.random_color_jitter(x, g, brightness=(0.5, 1.5), saturation=(0.0, 2.0),
                                                             hue=0.5),
    "svhn_augment": A.svhn_augment,
    "stl10_augment": A.stl10_augment,
}
COLOUR_OPS = {"random_color_jitter"}


# ---- contracts -----------------------------------------------------------------------------------

def test_presets_have_the_dataset_augment_signature():
    for f in (A.svhn_augment, A.stl10_augment):
        assert list(inspect.signature(f).parameters) == ["x", "generator"]


@pytest.mark.parametrize("name", RANDOM_OPS)
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (3, 3, 48, 40), (4, 1, 28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_preserved_and_input_untouched(name, shape, dtype):
    x = _images(*shape, dtype=dtype)
    before = x.clone()
    out = RANDOM_OPS[name](x, _gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_range_kept_at_saturating_magnitudes(name):
    x = torch.cat([torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16), _images(4, 3, 16, 16)])
    out = RANDOM_OPS[name](x, _gen())
    assert out.min() >= 0 and out.max() <= 1


def test_colour_clamped_when_pushed_out_of_range():
    x = _images()
    strong = A.random_color_jitter(x, _gen(), brightness=(3.0, 3.0), saturation=(5.0, 5.0), hue=0.5)
    assert strong.min() == 0 and strong.max() == 1


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_deterministic_in_the_generator(name):
    x = _images()
    f = RANDOM_OPS[name]
    assert torch.equal(f(x, _gen(7)), f(x, _gen(7)))
    assert not torch.allclose(f(x, _gen(7)), f(x, _gen(8)))
    g = _gen(7)
    assert not torch.allclose(f(x, g), f(x, g))      # the generator advances


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_identical_images_get_different_transforms(name):
    x = _images(1, 3, 32, 32).expand(6, -1, -1, -1).contiguous()
    out = RANDOM_OPS[name](x, _gen())
    flat = out.flatten(1)
    distance = torch.cdist(flat, flat) + torch.eye(6) * 1e9
    assert distance.min() > 1e-3


def test_grayscale_colour_jitter_is_brightness_only():
    x = _images(4, 1, 28, 28)
    out = A.random_color_jitter(x, _gen(), brightness=(1.0, 1.0), saturation=(0.0, 2.0), hue=0.5)
    assert torch.equal(out, x)                               # saturation and hue: identity on C = 1
    assert torch.allclose(A.adjust_saturation(x, 0.0), x) and torch.allclose(A.adjust_hue(x, 0.3), x)
    assert torch.allclose(A.adjust_brightness(x, 0.5), x * 0.5)


def test_no_loop_over_samples():
    """The number of torch calls an augmentation makes does not grow with the batch size (a
    per-sample Python loop would make it grow linearly); checked by counting, not timing."""
    for name, f in RANDOM_OPS.items():
        counts = [torch_calls(f, _images(n, 3, 32, 32), _gen()) for n in (2, 32)]
        assert counts[0] == counts[1] and counts[0] > 0, name


# ---- identity at zero magnitude --------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_zero_magnitudes_are_identity(c):
    x = _images(5, c, 32, 24)
    g = _gen()
    assert torch.allclose(A.random_affine(x, g, rotation=0, scale=(1, 1), shear=0, translate=0), x, atol=1e-5)
    assert torch.allclose(A.affine(x), x, atol=1e-5)
    assert torch.allclose(A.random_crop(x, g, (1.0, 1.0)), x, atol=1e-5)
    assert torch.equal(A.random_gaussian_blur(x, g, sigma=(0.0, 0.0), p=1.0), x)
    assert torch.equal(A.random_gaussian_blur(x, g, sigma=(1.0, 2.0), p=0.0), x)
    assert torch.equal(A.gaussian_blur(x, 0.0), x)
    assert torch.allclose(A.random_color_jitter(x, g), x, atol=1e-5)


# ---- geometry, by hand ------------------------------------------------------------------------------

def _dot(row: int, col: int, size: int = 9) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, col] = 1.0
    return x


@pytest.mark.parametrize("tx, ty, moved_to", [(1.0, 0.0, (4, 5)), (-1.0, 0.0, (4, 3)), (0.0, 1.0, (5, 4)),
                                              (0.0, -1.0, (3, 4)), (2.0, -3.0, (1, 6))])
def test_whole_pixel_translation_moves_a_pixel_exactly(tx, ty, moved_to):
    out = A.affine(_dot(4, 4), translate_x=tx, translate_y=ty, padding_mode="zeros")
    assert torch.allclose(out, _dot(*moved_to), atol=1e-5)


def test_rotation_by_90_degrees_is_clockwise_on_screen():
    # 9 x 9: centre (4, 4); the pixel right of centre, (row 4, col 6), goes below it, (row 6, col 4)
    out = A.affine(_dot(4, 6), rotation=90.0, padding_mode="zeros")
    assert torch.allclose(out, _dot(6, 4), atol=1e-5)
    assert torch.allclose(A.affine(_dot(2, 1), rotation=360.0), _dot(2, 1), atol=1e-5)


def _ramp(n=1, h=16, w=16) -> torch.Tensor:
    """I(x, y) = 0.5 + 0.02 x + 0.01 y in centred pixel coordinates (bilinear sampling is exact on it)."""
    ys = torch.arange(h) - (h - 1) / 2
    xs = torch.arange(w) - (w - 1) / 2
    return (0.5 + 0.02 * xs[None, :] + 0.01 * ys[:, None]).expand(n, 1, h, w).contiguous()


def test_scale_and_shear_on_a_linear_ramp():
    ramp, inner = _ramp(), (slice(None), slice(None), slice(4, 12), slice(4, 12))
    ys = (torch.arange(16) - 7.5)[:, None]
    xs = (torch.arange(16) - 7.5)[None, :]
    # scale 2: output(p) = input(p / 2)
    assert torch.allclose(A.affine(ramp, scale=2.0)[inner], (0.5 + 0.01 * xs + 0.005 * ys).expand(1, 1, 16, 16)[inner],
                          atol=1e-5)
    # shear 45°: content x -> x + y, so output(x, y) = input(x - y, y)
    expected = 0.5 + 0.02 * (xs - ys) + 0.01 * ys
    assert torch.allclose(A.affine(ramp, shear=45.0)[inner], expected.expand(1, 1, 16, 16)[inner], atol=1e-5)


def test_crop_resize_halves_the_slope_and_stays_inside():
    ramp = _ramp(8)
    full = A.random_crop(ramp, _gen(), (0.5, 0.5))
    out = full[..., 1:-1, 1:-1]      # the outermost samples may fall in the last half pixel, outside the ramp's centres
    assert torch.allclose(out[..., 1:] - out[..., :-1], torch.full_like(out[..., 1:], 0.01), atol=1e-5)
    assert torch.allclose(out[..., 1:, :] - out[..., :-1, :], torch.full_like(out[..., 1:, :], 0.005), atol=1e-5)
    # a crop of half the side inside the image: the values it shows lie within the image's range
    assert full.min() >= ramp.min() - 1e-6 and full.max() <= ramp.max() + 1e-6
    assert len({round(v, 4) for v in full[:, 0, 0, 0].tolist()}) == 8     # each sample its own position


def test_per_sample_parameters():
    x = _dot(4, 4).expand(2, 1, 9, 9)
    out = A.affine(x, translate_x=torch.tensor([1.0, -1.0]), padding_mode="zeros")
    assert torch.allclose(out, torch.cat([_dot(4, 5), _dot(4, 3)]), atol=1e-5)


# ---- blur, by hand ---------------------------------------------------------------------------------

def test_blur_of_a_constant_image_is_constant():
    x = torch.full((3, 3, 20, 20), 0.37)
    out = A.gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(out, x, atol=1e-6)


def test_blur_of_a_point_is_the_separable_gaussian():
    out = A.gaussian_blur(_dot(8, 8, size=17), 1.0, radius=3)
    z = 1 + 2 * (math.exp(-0.5) + math.exp(-2) + math.exp(-4.5))      # taps -3..3, sigma 1
    w0, w1, w3 = 1 / z, math.exp(-0.5) / z, math.exp(-4.5) / z
    assert out[0, 0, 8, 8].item() == pytest.approx(w0 * w0, abs=1e-6)
    assert out[0, 0, 8, 9].item() == pytest.approx(w0 * w1, abs=1e-6)
    assert out[0, 0, 7, 9].item() == pytest.approx(w1 * w1, abs=1e-6)
    assert out[0, 0, 5, 11].item() == pytest.approx(w3 * w3, abs=1e-6)
    assert out[0, 0, 8, 12].item() == 0 and out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_blur_sigma_is_per_sample():
    out = A.gaussian_blur(_dot(8, 8, size=17).expand(3, 1, 17, 17), torch.tensor([0.0, 0.7, 1.5]))
    peaks = out[:, 0, 8, 8]
    assert peaks[0] == 1.0 and 1.0 > peaks[1] > peaks[2] > 0


# ---- colour, by hand -------------------------------------------------------------------------------

def _colours() -> torch.Tensor:
    """1 x 3 x 1 x 6: red, green, blue, yellow, mid grey, an arbitrary colour."""
    c = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5], [0.2, 0.6, 0.9]])
    return c.T.reshape(1, 3, 1, 6)


def test_rgb_hsv_known_values_and_round_trip():
    hsv = A.rgb_to_hsv(_colours())[0, :, 0].T
    expected = torch.tensor([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [1 / 6, 1, 1], [0, 0, 0.5],
                             [(4 + (0.2 - 0.6) / 0.7) / 6, 0.7 / 0.9, 0.9]])
    assert torch.allclose(hsv, expected, atol=1e-6)
    x = _images()
    assert torch.allclose(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5)


def test_hue_rotation():
    x = _images()
    assert torch.allclose(A.adjust_hue(x, 0.0), x, atol=1e-5)
    assert torch.allclose(A.adjust_hue(x, 1.0), x, atol=1e-5)         # 360°
    assert torch.allclose(A.adjust_hue(x, -2.0), x, atol=1e-5)
    assert not torch.allclose(A.adjust_hue(x, 0.25), x, atol=1e-2)
    rgb = lambda out: out[0, :, 0].T
    third = rgb(A.adjust_hue(_colours(), 1 / 3))                    # 120°: red -> green -> blue -> red
    assert torch.allclose(third[:3], torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]), atol=1e-5)
    assert torch.allclose(third[4], torch.tensor([0.5, 0.5, 0.5]))  # grey has no hue
    assert torch.allclose(rgb(A.adjust_hue(_colours(), 0.5))[0], torch.tensor([0.0, 1, 1]), atol=1e-5)  # red -> cyan


def test_saturation_zero_is_the_luminance_grey():
    out = A.adjust_saturation(_colours(), 0.0)[0, :, 0].T
    luma = torch.tensor([0.299, 0.587, 0.114, 0.299 + 0.587, 0.5, 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9])
    assert torch.allclose(out, luma[:, None].expand(6, 3), atol=1e-6)
    x = _images()
    assert torch.allclose(A.adjust_saturation(x, 1.0), x, atol=1e-6)
    # factor 2 doubles the distance to grey (nothing clips here): 2 x - grey
    mid = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    grey = 0.299 * 0.4 + 0.587 * 0.5 + 0.114 * 0.6
    assert torch.allclose(A.adjust_saturation(mid, 2.0).flatten(), torch.tensor([0.8, 1.0, 1.2]) - grey, atol=1e-6)


def test_brightness():
    x = _images()
    assert torch.equal(A.adjust_brightness(x, 1.0), x)
    assert torch.allclose(A.adjust_brightness(x, 0.5), x / 2)
    assert torch.equal(A.adjust_brightness(x, 3.0), (3 * x).clamp(0, 1))
    per_sample = A.adjust_brightness(x[:2], torch.tensor([0.0, 1.0]))
    assert torch.equal(per_sample[0], torch.zeros_like(x[0])) and torch.equal(per_sample[1], x[1])


# ---- presets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, shape", [(A.svhn_augment, (3, 32, 32)), (A.stl10_augment, (3, 96, 96)),
                                           (A.svhn_augment, (3, 96, 96)), (A.stl10_augment, (3, 32, 32)),
                                           (A.svhn_augment, (1, 28, 28)), (A.stl10_augment, (1, 28, 28))])
def test_presets_change_every_image(preset, shape):
    x = _images(8, *shape)
    out = preset(x, _gen(3))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().flatten(1).mean(1) > 0.01).all()


@pytest.mark.parametrize("preset, max_shift", [
    (A.svhn_augment, 3.5),          # rotation/scale/shear fix the centre; translation <= 3.5 px per axis
    (A.stl10_augment, (1 - 0.8) * 33 / 2 / 0.8),   # crop centre <= (1 - f) * size / 2 off, magnified 1 / f
])
def test_preset_magnitudes_on_a_centred_dot(preset, max_shift):
    """A white dot at the centre of a 33 x 33 image ends up within the preset's documented shift
    (a wrong unit -- radians for degrees, normalised for pixel coordinates -- would break this)."""
    x = _dot(16, 16, size=33).expand(32, 3, 33, 33).contiguous()
    out = preset(x, _gen()).mean(1)
    mass = out.sum((1, 2))
    coords = torch.arange(33.0) - 16
    cy = (out.sum(2) * coords).sum(1) / mass
    cx = (out.sum(1) * coords).sum(1) / mass
    assert (mass > 0.3).all()
    assert cx.abs().max() <= max_shift + 0.5 and cy.abs().max() <= max_shift + 0.5
    assert cx.std() > 0.3 and cy.std() > 0.3                      # and it does move


@pytest.mark.cuda
@pytest.mark.parametrize("preset", [A.svhn_augment, A.stl10_augment])
def test_presets_on_cuda_match_themselves_and_stay_on_device(preset):
    x = _images(32, 3, 96, 96).cuda()
    a, b = preset(x, _gen(5, "cuda")), preset(x, _gen(5, "cuda"))
    assert a.device == x.device and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
