"""TAC-CCL: transformed attention consistency and contrastive clustering loss for unsupervised
deep metric learning (seed 003 ch. 4, §4.3; Fig. 4.2).

A siamese network (one set of weights) sees x and x' = T(x), T a random spatial transform
("cropping (sub-image), rotation, zooming, and perspective", §4.3.1). An attention module after
the last stage (CBAM, Woo et al. ECCV 2018, "placed after the inception_5b layer", §4.4.2) gives
the spatial attention map M, which modulates the feature map before the embedding FC. The loss is
the baseline's plus three terms:

    L = L_MS (k-means pseudo-labels + memory, §4.3.2: ms_baseline)
        + tac_weight     L_TAC = sum_(u,v) |M(u,v) - M'(T_u(u,v), T_v(u,v))|^2         (eq. 4.2)
        + feature_weight L_F   = ||F - F'||_2                                         (§4.3.1)
        + cc_weight      L_CC  = E_F { ||F - C+(F)||_2 / ||F - C-(F)||_2 }             (eq. 4.3)
        + cross_weight   L_TAC across images = sum |M_n Gamma_n - M_m Gamma_m|^2     (eqs. 4.4-4.6)

- T: a random affine map per image (flip with p 0.5, rotation in +-``rotation`` degrees, zoom
  s in [``zoom``, 1] with a translation that keeps the crop inside the image), applied to the
  image and, in normalised coordinates, to M (``torch.nn.functional.affine_grid``); positions
  that T maps outside the map are left out of L_TAC. Perspective transforms are not drawn.
- F, F': L2-normalised embeddings (the MS loss compares cosines); C+ / C- the nearest and
  second-nearest of the K k-means centres of the current clustering (the pseudo-labels'
  centres, refreshed with them, §4.3.3).
- Cross-image supervision (§4.3.4): each image is paired with another image of its
  pseudo-class in the batch; keypoint pairs between the two give Gamma, Gamma', sums of
  Gaussians (``sigma`` in map cells, eq. 4.4) around each image's keypoints, and eq. 4.6
  compares the masked attention maps. Off by default (``cross_weight = 0``). The keypoint pairs
  (``matcher``):
  - ``"asift"``, the dissertation's: affine-SIFT (OpenCV's ``AffineFeature`` around SIFT,
    Morel & Yu 2009) keypoints of the stored training images (grey, un-augmented; computed once
    per image and kept), matched by descriptor distance with Lowe's ratio test (0.75); the
    ``matches`` closest pairs, pixel positions mapped onto the feature map's cells. Needs
    OpenCV (``pip install opencv-python-headless``, or the ``asift`` extra); SIFT finds few
    keypoints on tiny images (8x8 digits: none, so no cross-image term);
  - ``"features"``, a FALLBACK without OpenCV: the ``matches`` mutual nearest neighbours of the
    two (detached) feature maps' position vectors with the highest cosine similarity.
- Weights: the dissertation gives none; all 1 (``cross_weight`` 0). The MS term sees x only (as
  the baseline); the attention module is the method's own (``model.extras["attention"]``).

The dissertation's Table 4.4 rows: baseline = ms_baseline; "+CCL" = tac_weight = feature_weight
= 0; "+TAC" = all terms.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import UserError, hookimpl
from ssl_bench.params import hyperparameter
from ssl_bench_plugins.methods.ms_baseline import MultiSimilarityBaseline


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel attention (a shared MLP on the
    average- and max-pooled map, reduction ``reduction``), then spatial attention (a 7x7 conv on
    the channel mean and max; padded to the map). ``forward`` -> (attended map, spatial map M in
    (0, 1), N x 1 x h x w)."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channel = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * channel
        m = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * m, m


def random_affine(n: int, generator: torch.Generator, device, rotation: float, zoom: float) -> torch.Tensor:
    """n random transforms T as affine_grid matrices (n x 2 x 3, normalised coordinates): flip
    (p 0.5), rotation in +-``rotation`` degrees, scale s in [zoom, 1] (a crop of side s), shift
    within +-(1 - s)."""
    u = torch.rand(n, 4, generator=generator, device=device)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    angle = (2 * u[:, 1] - 1) * math.radians(rotation)
    s = zoom + (1 - zoom) * u[:, 2]
    shift = (2 * torch.rand(n, 2, generator=generator, device=device) - 1) * (1 - s)[:, None]
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    return torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                        torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """T(x): ``x`` sampled at theta's grid (bilinear, zeros outside)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def tac_loss(m: torch.Tensor, m_transformed: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Eq. 4.2: sum over positions of |T(M) - M'|^2, averaged over the batch; positions whose
    source lies outside M (T's zero padding) do not count."""
    target = warp(m, theta)
    inside = (warp(torch.ones_like(m), theta) > 1 - 1e-4).to(m.dtype)
    return ((target - m_transformed).pow(2) * inside).flatten(1).sum(1).mean()


def contrastive_clustering(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Eq. 4.3: mean over the batch of ||F - C+|| / ||F - C-|| (nearest / second-nearest centre)."""
    d = torch.cdist(z, centres.to(z.dtype))
    nearest = d.topk(2, dim=1, largest=False).values
    return (nearest[:, 0] / nearest[:, 1].clamp_min(1e-12)).mean()


def cluster_partners(labels: torch.Tensor) -> torch.Tensor:
    """For each image, another image of its (pseudo-)class in the batch (the next one, cyclically;
    itself if it is alone)."""
    partner = torch.arange(len(labels), device=labels.device)
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).squeeze(1)
        partner[members] = torch.roll(members, -1)
    return partner


def keypoint_masks(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, h: int, w: int,
                   sigma: float) -> torch.Tensor:
    """Eq. 4.4: per image, the sum of Gaussians (``sigma`` in map cells) centred on its keypoints
    (``rows``, ``cols``: N x M positions in map cells; ``weights``: N x M, 0 for a missing keypoint)
    -> N x 1 x h x w."""
    grid_r = torch.arange(h, device=rows.device, dtype=rows.dtype)[:, None]
    grid_c = torch.arange(w, device=rows.device, dtype=rows.dtype)[None, :]
    bumps = torch.exp(-((grid_r - rows[..., None, None]) ** 2 + (grid_c - cols[..., None, None]) ** 2)
                      / (2 * sigma ** 2))
    return (bumps * weights[..., None, None]).sum(1, keepdim=True)


def matched_masks(f: torch.Tensor, g: torch.Tensor, matches: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gamma, Gamma' (eqs. 4.4-4.5) of image pairs from their feature maps f, g (N x C x h x w):
    the ``matches`` mutual nearest neighbours (cosine) of their position vectors with the highest
    similarity are the keypoints (the fallback matcher)."""
    n, _, h, w = f.shape
    a, b = F.normalize(f.flatten(2), dim=1), F.normalize(g.flatten(2), dim=1)
    sim = a.transpose(1, 2) @ b  # n x (h w) x (h w)
    best_in_g, best_in_f = sim.argmax(2), sim.argmax(1)
    positions = torch.arange(h * w, device=f.device)
    mutual = best_in_f.gather(1, best_in_g) == positions
    score = sim.amax(2).masked_fill(~mutual, -math.inf)
    top = score.topk(min(matches, h * w), dim=1)
    keep = torch.isfinite(top.values).to(f.dtype)  # fewer mutual matches than asked: the rest weigh 0
    u, v = top.indices, best_in_g.gather(1, top.indices)
    return tuple(keypoint_masks((i // w).to(f.dtype), (i % w).to(f.dtype), keep, h, w, sigma) for i in (u, v))


def asift_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine-SIFT keypoints of a grey uint8 image: their (x, y) pixel positions (K x 2) and SIFT
    descriptors (K x 128), by OpenCV's AffineFeature (simulated tilts and rotations) around SIFT."""
    import cv2

    keypoints, descriptors = cv2.AffineFeature_create(cv2.SIFT_create()).detectAndCompute(image, None)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.array([k.pt for k in keypoints], np.float32), descriptors.astype(np.float32)


def match_keypoints(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], matches: int,
                    ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """The ``matches`` best pairs of two images' (positions, descriptors): each keypoint of ``a``
    with its nearest descriptor in ``b`` where that is nearer than ``ratio`` times the second
    nearest (Lowe's test), the closest pairs first -> (positions in a, positions in b), M x 2 each."""
    (pa, da), (pb, db) = a, b
    if len(da) == 0 or len(db) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    distance = np.sqrt(np.maximum((da ** 2).sum(1)[:, None] - 2 * da @ db.T + (db ** 2).sum(1)[None, :], 0))
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :2]
    first, second = np.take_along_axis(distance, nearest, 1).T
    good = np.flatnonzero(first < ratio * second)
    good = good[np.argsort(first[good], kind="stable")][:matches]
    return pa[good], pb[nearest[good, 0]]


class TACCCL(MultiSimilarityBaseline):
    """ms_baseline + attention (CBAM) + L_TAC (eq. 4.2) + L_F + L_CC (eq. 4.3) [+ eq. 4.6]."""

    name = "tac_ccl"

    tac_weight: float = hyperparameter(1.0, ge=0, help="weight of L_TAC, eq. 4.2 (not given; ours 1)")
    feature_weight: float = hyperparameter(1.0, ge=0, help="weight of L_F = ||F - F'|| (not given; ours 1)")
    cc_weight: float = hyperparameter(1.0, ge=0, help="weight of L_CC, eq. 4.3 (not given; ours 1)")
    cross_weight: float = hyperparameter(0.0, ge=0, help="weight of the cross-image L_TAC, eq. 4.6 (0: off)")
    matcher: Literal["features", "asift"] = hyperparameter(
        "features", since="0.2", help="keypoint pairs of eq. 4.6: asift (the dissertation's affine-SIFT; needs OpenCV) "
                                      "or features (the fallback: mutual nearest feature-map positions)")
    matches: int = hyperparameter(4, ge=1, help="keypoint pairs per image pair (eq. 4.5's M)")
    sigma: float = hyperparameter(1.0, gt=0, help="sigma_u = sigma_v of eq. 4.4, in feature-map cells")
    rotation: float = hyperparameter(15.0, ge=0, le=180, help="T: rotation range, +- degrees")
    zoom: float = hyperparameter(0.8, gt=0, le=1, help="T: smallest crop side (fraction of the image)")
    attention_at: str = hyperparameter("", help="backbone stage the attention follows (''; the deepest: "
                                                "inception_5b for googlenet, §4.4.2)")
    reduction: int = hyperparameter(16, ge=1, help="CBAM's channel reduction ratio (CBAM paper: 16)")

    def check(self, plan):
        super().check(plan)
        if self.cross_weight and self.matcher == "asift":
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise UserError("methods.tac_ccl.matcher = 'asift' needs OpenCV, which is not installed: "
                                "pip install opencv-python-headless (or ssl-bench[asift]), or use matcher = "
                                "'features'") from None

    def on_train_start(self, model, ctx):
        super().on_train_start(model, ctx)
        self.keypoints: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # training image -> its ASIFT features

    def asift_masks(self, ctx, idx: torch.Tensor, partner: torch.Tensor, h: int, w: int):
        """Gamma, Gamma' of eq. 4.4 from the ASIFT matches of each image (training index ``idx``)
        with its partner, pixel positions mapped onto the h x w map."""
        images = ctx.data.train_x
        size_h, size_w = images.shape[-2:]
        for i in idx.tolist():
            if i not in self.keypoints:
                grey = images[i].float().mean(0).round().to(torch.uint8).cpu().numpy()
                self.keypoints[i] = asift_features(grey)
        rows, cols = torch.zeros(2, len(idx), self.matches), torch.zeros(2, len(idx), self.matches)
        weights = torch.zeros(len(idx), self.matches)
        for n, (i, j) in enumerate(zip(idx.tolist(), idx[partner].tolist())):
            if i == j:
                continue  # alone in its cluster in this batch: no pair
            for side, points in enumerate(match_keypoints(self.keypoints[i], self.keypoints[j], self.matches)):
                # pixel centres (x + 0.5) / W of the image -> cell centres of the map
                cols[side, n, :len(points)] = torch.from_numpy((points[:, 0] + 0.5) * w / size_w - 0.5)
                rows[side, n, :len(points)] = torch.from_numpy((points[:, 1] + 0.5) * h / size_h - 0.5)
                weights[n, :len(points)] = 1.0
        return tuple(keypoint_masks(rows[side].to(ctx.device), cols[side].to(ctx.device), weights.to(ctx.device),
                                    h, w, self.sigma) for side in (0, 1))

    def build_modules(self, model, num_outputs):
        channels = model.feature_shape(self.attention_at)[0]
        return {"attention": CBAM(channels, self.reduction)}

    def attend(self, model, x):
        """(embedding, spatial attention map M, the feature map before attention) of a normalised batch."""
        features = model.feature_map(x, self.attention_at)
        attended, m = model.extras["attention"](features)
        return model.embed_map(attended, self.attention_at), m, features

    def embed(self, model, x):
        return self.attend(model, x)[0]

    def loss_terms(self, batch, model, ctx):
        x, y = batch.x_labeled, batch.y_labeled  # a P x K batch of pseudo-classes
        theta = random_affine(len(x), ctx.generator, x.device, self.rotation, self.zoom)
        z, m, features = self.attend(model, torch.cat([x, warp(x, theta)]))  # one pass: shared batch statistics
        (z1, z2), (m1, m2) = z.chunk(2), m.chunk(2)
        terms = {"multi_similarity": self.metric_loss(z1, y, ctx)}
        f1, f2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        if self.tac_weight:
            terms["tac"] = self.tac_weight * tac_loss(m1, m2, theta)
        if self.feature_weight:
            terms["feature"] = self.feature_weight * (f1 - f2).norm(dim=1).mean()
        if self.cc_weight:
            terms["contrastive_clustering"] = self.cc_weight * contrastive_clustering(f1, self.centres)
        if self.cross_weight:
            partner = cluster_partners(y)
            maps = features[:len(x)].detach()
            if self.matcher == "asift":
                gamma, gamma_partner = self.asift_masks(ctx, batch.idx_labeled, partner, *maps.shape[-2:])
                gamma, gamma_partner = gamma.to(m1.dtype), gamma_partner.to(m1.dtype)
            else:
                gamma, gamma_partner = matched_masks(maps, maps[partner], self.matches, self.sigma)
            difference = m1 * gamma - m1[partner] * gamma_partner
            terms["tac_cross"] = self.cross_weight * difference.pow(2).flatten(1).sum(1).mean()
        return terms


@hookimpl
def ssl_bench_methods():
    return [TACCCL]
