"""The standard SSL augmentation pipelines (plugins/augment/pipelines.py): the plugin contract
(shape, dtype, range, determinism, data-independent draws), hand-checkable cases of the
deterministic cores, distribution sanity of the random wrappers, RandAugment's ops at
hand-checkable magnitudes and against PIL."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_bench.views import Augmentation
from ssl_bench_plugins.augment import pipelines as P

from conftest import torch_calls

NAMES = ["flip_translate", "cutout", "randaugment", "randaugment_cutout", "flip", "translate"]
PIPELINES = {a.name: a for a in P.ssl_bench_augmentations()}


def _gen(seed: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _images(n=6, c=3, h=32, w=32, seed=1, dtype=torch.float32, device="cpu") -> torch.Tensor:
    x = torch.rand(n, c, h, w, generator=_gen(seed), dtype=dtype)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    return x.to(device)


def _grid_images(n=4, c=3, h=32, w=32, seed=1) -> torch.Tensor:
    """Images on the 8-bit grid (k / 255), as PIL sees them."""
    return torch.randint(0, 256, (n, c, h, w), generator=_gen(seed)).float() / 255


def _to_pil(img: torch.Tensor):
    from PIL import Image
    a = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def _from_pil(im) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(im).copy()).float() / 255
    return a[None] if a.ndim == 2 else a.permute(2, 0, 1)


# ---- the plugin contract ----------------------------------------------------------------------------

def test_hook_lists_the_six_pipelines():
    assert [a.name for a in P.ssl_bench_augmentations()] == NAMES
    assert all(isinstance(a, Augmentation) and a.help for a in P.ssl_bench_augmentations())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("c,dtype", [(1, torch.float32), (3, torch.float32), (3, torch.float64)])
def test_shape_dtype_range_preserved_and_input_untouched(name, c, dtype):
    x = _images(8, c, 32, 24, dtype=dtype)
    before = x.clone()
    out = PIPELINES[name].apply(x, _gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(x, before)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_the_generator(name):
    x = _images(16)
    f = PIPELINES[name].apply
    assert torch.equal(f(x, _gen(5)), f(x, _gen(5)))
    assert not torch.equal(f(x, _gen(5)), f(x, _gen(6)))


@pytest.mark.parametrize("name", NAMES)
def test_number_of_draws_does_not_depend_on_the_data(name):
    """Two different inputs leave the generator in the same state (so a later draw, e.g. the
    next view's, is the same)."""
    f = PIPELINES[name].apply
    g1, g2 = _gen(3), _gen(3)
    f(_images(16, seed=1), g1)
    f(torch.full((16, 3, 32, 32), 0.5), g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    y = _images(4, seed=9)
    assert torch.equal(f(y, g1), f(y, g2))


def test_randaugment_strategies_agree_and_n_zero_is_identity():
    x = _images(64)
    a = P.randaugment(x, _gen(2), strategy="select")
    b = P.randaugment(x, _gen(2), strategy="all")
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(P.randaugment(x, _gen(), n=0), x)
    with pytest.raises(ValueError):
        P.randaugment(x, _gen(), strategy="nope")


def test_no_loop_over_samples():
    """The number of torch calls does not grow with the batch (no per-sample Python loop);
    at these batch sizes every RandAugment op is drawn in every round."""
    for name, aug in PIPELINES.items():
        counts = [torch_calls(aug.apply, _images(n, 3, 8, 8), _gen()) for n in (256, 1024)]
        assert counts[0] == counts[1] and counts[0] > 0, name


# ---- flip, translate, cutout: deterministic cores by hand -----------------------------------------

def test_flip_where_by_hand():
    x = torch.tensor([[[[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]]]])                    # 1 x 1 x 2 x 3
    assert torch.equal(P.flip_where(x, torch.tensor([True])), torch.tensor([[[[0.2, 0.1, 0.0], [0.5, 0.4, 0.3]]]]))
    assert torch.equal(P.flip_where(x, torch.tensor([False])), x)
    two = torch.cat([x, x])
    out = P.flip_where(two, torch.tensor([False, True]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[0].flip(2))


def test_translate_by_hand_reflects_without_repeating_the_edge():
    row = torch.tensor([0.0, 0.1, 0.2, 0.3]).view(1, 1, 1, 4)
    assert torch.equal(P.translate_by(row, 1, 0), torch.tensor([0.1, 0.0, 0.1, 0.2]).view(1, 1, 1, 4))
    assert torch.equal(P.translate_by(row, -2, 0), torch.tensor([0.2, 0.3, 0.2, 0.1]).view(1, 1, 1, 4))
    assert torch.equal(P.translate_by(row, 0, 0), row)
    col = row.transpose(2, 3)
    assert torch.equal(P.translate_by(col, 0, 1), torch.tensor([0.1, 0.0, 0.1, 0.2]).view(1, 1, 4, 1))


@pytest.mark.parametrize("dx,dy", [(3, -2), (-4, 4), (0, 1), (4, 0)])
def test_translate_by_is_reflect_pad_and_crop(dx, dy):
    x = _images(2, 3, 12, 10)
    p = 4
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    expected = padded[:, :, p - dy:p - dy + 12, p - dx:p - dx + 10]
    out = P.translate_by(x, dx, dy)
    assert torch.equal(out, expected)
    # the content itself moved by exactly (dx, dy)
    ys, yd = (slice(0, 12 - dy), slice(dy, 12)) if dy >= 0 else (slice(-dy, 12), slice(0, 12 + dy))
    xs, xd = (slice(0, 10 - dx), slice(dx, 10)) if dx >= 0 else (slice(-dx, 10), slice(0, 10 + dx))
    assert torch.equal(out[:, :, yd, xd], x[:, :, ys, xs])


def test_translate_by_per_sample_and_flip_translate_by_composes():
    x = _images(3, 3, 9, 11)
    dx, dy, flip = torch.tensor([1, -3, 0]), torch.tensor([0, 2, -1]), torch.tensor([True, False, True])
    out = P.translate_by(x, dx, dy)
    for i in range(3):
        assert torch.equal(out[i:i + 1], P.translate_by(x[i:i + 1], int(dx[i]), int(dy[i])))
    assert torch.equal(P.flip_translate_by(x, flip, dx, dy), P.translate_by(P.flip_where(x, flip), dx, dy))


def test_cutout_at_by_hand_and_clipped():
    x = torch.ones(2, 1, 4, 4)
    out = P.cutout_at(x, torch.tensor([1, 0]), torch.tensor([1, 3]), 2, fill=0.5)
    hole0 = torch.ones(4, 4)
    hole0[0:2, 0:2] = 0.5                                       # rows [0, 2), cols [0, 2)
    assert torch.equal(out[0, 0], hole0)
    hole1 = torch.ones(4, 4)
    hole1[0:1, 2:4] = 0.5                                       # rows [-1, 1) -> [0, 1), cols [2, 4)
    assert torch.equal(out[1, 0], hole1)
    odd = P.cutout_at(torch.ones(1, 3, 5, 5), 2, 2, 3, fill=0.0)
    assert torch.equal(odd[0, :, 1:4, 1:4], torch.zeros(3, 3, 3)) and float(odd.sum()) == 3 * (25 - 9)
    assert torch.equal(P.cutout_at(x, 1, 1, 0), x)


# ---- random wrappers: replay and distribution sanity ------------------------------------------------

def test_random_wrappers_replay_their_draws():
    x = _images(32)
    g = _gen(4)
    flip = P.draw_flips(x, g)
    dx, dy = P.draw_shifts(x, g)
    assert torch.equal(P.flip_translate(x, _gen(4)), P.translate_by(P.flip_where(x, flip), dx, dy))
    cy, cx = P.draw_cutout(x, _gen(4))
    assert torch.equal(P.random_cutout(x, _gen(4)), P.cutout_at(x, cy, cx, 16, 0.5))
    assert torch.equal(P.random_flip(x, _gen(4)), P.flip_where(x, P.draw_flips(x, _gen(4))))
    g = _gen(4)
    ra = P.randaugment(x, g)
    g2 = _gen(4)
    y = x
    for _ in range(2):
        k, u = P.draw_randaugment_round(x, g2)
        y = P.apply_randaugment_ops(y, k, u)
    assert torch.equal(ra, y)
    assert torch.equal(P.random_cutout(ra, g), P.random_cutout(y, g2))


def test_flip_is_about_half_and_translate_is_uniform_within_4px():
    n = 2000
    x = torch.rand(n, 1, 4, 8, generator=_gen(1))
    flipped = P.random_flip(x, _gen(2))
    is_flipped = (flipped == x.flip(3)).flatten(1).all(1)
    assert ((flipped == x).flatten(1).all(1) | is_flipped).all()
    assert 0.45 < is_flipped.float().mean() < 0.55
    dx, dy = P.draw_shifts(torch.zeros(n, 3, 32, 32), _gen(3))
    assert set(dx.tolist()) == set(range(-4, 5)) and set(dy.tolist()) == set(range(-4, 5))
    assert torch.bincount(dx + 4).min() > n / 9 * 0.75
    dx, dy = P.draw_shifts(torch.zeros(n, 3, 96, 40), _gen(3))
    assert int(dx.abs().max()) == 5 and int(dy.abs().max()) == 12          # round(0.125 * side) per axis
    dx, _ = P.draw_shifts(torch.zeros(n, 3, 32, 32), _gen(3), max_shift=2)
    assert set(dx.tolist()) == set(range(-2, 3))


def test_cutout_hole_is_grey_square_of_half_the_side():
    x = torch.zeros(500, 3, 32, 32)
    out = P.random_cutout(x, _gen(5))
    grey = (out == 0.5).all(1)                                  # N x H x W
    area = grey.flatten(1).sum(1)
    assert int(area.max()) == 16 * 16 and int(area.min()) >= 8 * 8        # a corner centre keeps a quarter
    cy, cx = P.draw_cutout(x, _gen(5))
    inside = (cy >= 8) & (cy <= 24) & (cx >= 8) & (cx <= 24)
    assert bool((area[inside] == 256).all()) and bool((area[~inside] < 256).all())
    rows, cols = grey.any(2), grey.any(1)                       # the hole is a rectangle
    assert torch.equal(area, rows.sum(1) * cols.sum(1))


# ---- RandAugment ops: hand-checkable magnitudes ---------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_identity_magnitudes(c):
    x = _images(4, c, 16, 12)
    exact = [P.brightness(x, 1.0), P.color(x, 1.0), P.contrast(x, 1.0), P.sharpness(x, 1.0),
             P.autocontrast(x, 0.0), P.equalize(x, 0.0), P.posterize(x, 8), P.identity(x)]
    for y in exact:
        assert torch.allclose(y, x, atol=1e-6)
    for y in [P.rotate(x, 0.0), P.shear_x(x, 0.0), P.shear_y(x, 0.0), P.translate_x(x, 0.0), P.translate_y(x, 0.0)]:
        assert torch.allclose(y, x, atol=1e-5)
    assert torch.equal(P.posterize(x, 8), x)
    assert torch.equal(P.solarize(x, 0.0), 1.0 - x)                       # threshold 0 inverts all
    assert torch.equal(P.solarize(x, 1.01), x)


def test_grey_images():
    x = _images(4, 1, 8, 8)
    assert torch.equal(P.color(x, 0.05), x)                               # no colour to change
    assert torch.allclose(P.contrast(x, 0.0), x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


def test_colour_ops_at_zero_and_half():
    x = _images(4, 3, 8, 8)
    assert torch.equal(P.brightness(x, 0.0), torch.zeros_like(x))
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(P.color(x, 0.0), grey[:, None].expand_as(x), atol=1e-6)
    assert torch.allclose(P.contrast(x, 0.0), grey.mean(dim=(1, 2))[:, None, None, None].expand_as(x), atol=1e-6)
    flat = torch.full((1, 3, 5, 5), 0.3)
    assert torch.allclose(P.sharpness(flat, 0.0), flat)                   # smoothing a flat image
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 1.0
    smooth = P.sharpness(dot, 0.0)[0, 0]
    assert torch.isclose(smooth[2, 2], torch.tensor(5 / 13)) and torch.isclose(smooth[1, 1], torch.tensor(1 / 13))
    per_sample = P.brightness(x, torch.tensor([0.0, 1.0, 0.5, 0.25]))
    assert torch.equal(per_sample[1], x[1]) and torch.equal(per_sample[0], torch.zeros_like(x[0]))


def test_autocontrast_equalize_posterize_solarize_by_hand():
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 1, 1, 3)
    assert torch.allclose(P.autocontrast(x), torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3))
    assert torch.allclose(P.autocontrast(x, 0.5), torch.tensor([0.1, 0.45, 0.8]).view(1, 1, 1, 3))
    flat = torch.full((1, 1, 2, 2), 0.3)
    assert torch.equal(P.autocontrast(flat), flat) and torch.equal(P.equalize(flat), flat)
    levels = torch.tensor([0, 15, 16, 200, 255]).float().view(1, 1, 1, 5) / 255
    assert torch.equal(P.posterize(levels, 4) * 255, torch.tensor([0, 0, 16, 192, 240]).float().view(1, 1, 1, 5))
    assert torch.equal((P.solarize(levels, 128 / 255) * 255).round(),
                       torch.tensor([0, 15, 16, 55, 0]).float().view(1, 1, 1, 5))
    # two grey levels in a 32 x 32 image go to the extremes (as PIL; see the PIL test below)
    two = torch.full((1, 1, 32, 32), 50 / 255)
    two[:, :, 16:] = 200 / 255
    eq = P.equalize(two)
    assert torch.equal(eq[:, :, :16], torch.zeros(1, 1, 16, 32))
    assert torch.equal(eq[:, :, 16:], torch.ones(1, 1, 16, 32))


def test_geometry_by_hand():
    x = _images(2, 3, 8, 8)
    # a quarter turn is a rot90 (clockwise on screen for +90, as ops.affine)
    assert torch.allclose(P.rotate(x, 90.0), torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)
    # translation by a whole number of pixels moves pixels exactly; grey fills the rest
    t = P.translate_x(x, 0.25)                                             # 2 px right
    assert torch.allclose(t[..., 2:], x[..., :-2], atol=1e-6)
    assert torch.allclose(t[..., :2], torch.full_like(t[..., :2], 0.5))
    t = P.translate_y(x, -0.125)                                           # 1 px up
    assert torch.allclose(t[:, :, :-1], x[:, :, 1:], atol=1e-6)
    assert torch.allclose(t[:, :, -1], torch.full_like(t[:, :, -1], 0.5))
    # shear by rate 1 on a 5 x 5 image: row i moves right by i - 2 px, column j down by j - 2
    img = torch.rand(1, 1, 5, 5, generator=_gen(7))
    sx, sy = P.shear_x(img, 1.0)[0, 0], P.shear_y(img, 1.0)[0, 0]
    for i in range(5):
        for j in range(5):
            src = j - (i - 2)
            expected = img[0, 0, i, src] if 0 <= src < 5 else torch.tensor(0.5)
            assert torch.isclose(sx[i, j], expected, atol=1e-5)
            src = i - (j - 2)
            expected = img[0, 0, src, j] if 0 <= src < 5 else torch.tensor(0.5)
            assert torch.isclose(sy[i, j], expected, atol=1e-5)


def test_magnitude_ranges_follow_fixmatch_table_12():
    ranges = {op.name: (op.low, op.high) for op in P.RANDAUGMENT_OPS}
    assert len(ranges) == 14
    assert ranges["Brightness"] == ranges["Color"] == ranges["Contrast"] == ranges["Sharpness"] == (0.05, 0.95)
    assert ranges["Rotate"] == (-30.0, 30.0) and ranges["ShearX"] == ranges["TranslateY"] == (-0.3, 0.3)
    assert ranges["Posterize"] == (4, 8) and ranges["Solarize"] == (0.0, 1.0)
    posterize = next(op for op in P.RANDAUGMENT_OPS if op.name == "Posterize")
    bits = posterize.magnitude(torch.rand(5000, generator=_gen()))
    assert set(bits.tolist()) == {4.0, 5.0, 6.0, 7.0, 8.0}
    k, u = P.draw_randaugment_round(torch.zeros(14000, 1, 1, 1), _gen())
    counts = torch.bincount(k, minlength=14)
    assert counts.min() > 800 and counts.max() < 1200 and 0 <= float(u.min()) and float(u.max()) < 1


# ---- against PIL on 8-bit images ---------------------------------------------------------------------

def _pil_batch(x, f):
    return torch.stack([_from_pil(f(_to_pil(img))) for img in x])


@pytest.mark.parametrize("c", [1, 3])
def test_matches_pil(c):
    pytest.importorskip("PIL")
    from PIL import ImageEnhance, ImageOps
    x = _grid_images(4, c, 32, 32)
    x[:, :, :12] = x[:, :, :12] * 0.3 + 0.4                               # uneven histograms
    x = (x * 255).round() / 255
    exact = {
        "equalize": (P.equalize, ImageOps.equalize),
        "posterize": (lambda t: P.posterize(t, 5), lambda im: ImageOps.posterize(im, 5)),
        "solarize": (lambda t: P.solarize(t, 100 / 255), lambda im: ImageOps.solarize(im, 100)),
    }
    for name, (ours, pil) in exact.items():
        assert torch.allclose(ours(x), _pil_batch(x, pil), atol=1e-6), name
    two = torch.full((1, c, 32, 32), 50 / 255)
    two[:, :, 16:] = 200 / 255
    assert torch.allclose(P.equalize(two), _pil_batch(two, ImageOps.equalize), atol=1e-6)
    small = torch.full((1, c, 4, 4), 50 / 255)
    small[:, :, 2:] = 200 / 255                                            # too few pixels: PIL leaves it
    assert torch.allclose(P.equalize(small), _pil_batch(small, ImageOps.equalize), atol=1e-6)
    close = {   # PIL rounds intermediate results to whole levels
        "autocontrast": (P.autocontrast, ImageOps.autocontrast),
        "brightness": (lambda t: P.brightness(t, 0.6), lambda im: ImageEnhance.Brightness(im).enhance(0.6)),
        "contrast": (lambda t: P.contrast(t, 0.3), lambda im: ImageEnhance.Contrast(im).enhance(0.3)),
        "sharpness": (lambda t: P.sharpness(t, 0.1), lambda im: ImageEnhance.Sharpness(im).enhance(0.1)),
    }
    if c == 3:
        close["color"] = (lambda t: P.color(t, 0.2), lambda im: ImageEnhance.Color(im).enhance(0.2))
    for name, (ours, pil) in close.items():
        assert torch.allclose(ours(x), _pil_batch(x, pil), atol=2.01 / 255), name


# ---- CUDA ------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_deterministic_and_on_device(name):
    x = _images(64, device="cuda")
    f = PIPELINES[name].apply
    a, b = f(x, _gen(1, "cuda")), f(x, _gen(1, "cuda"))
    assert a.device == x.device and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, f(x, _gen(2, "cuda")))
    if name == "randaugment":
        assert torch.allclose(P.randaugment(x, _gen(1, "cuda"), strategy="all"), a, atol=1e-5)
