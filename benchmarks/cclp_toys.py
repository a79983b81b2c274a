"""CCLP toy experiments (Kamnitsas et al. 2018, §4, Figs. 2-3): free 2-D embeddings, a linear
classifier, gradient descent on L_sup + w L_CCLP (and on L_sup + w CER as the failure case),
with the gradient arrows of each loss drawn on each point. One PNG per experiment.

    python benchmarks/cclp_toys.py --out results/cclp_toys [--seed 0] [--only circles_S10 ...]

Set-up, as §4 describes it: the embeddings Z (N x 2) are the trainable parameters, initialised
at the coordinates of a toy data set (sklearn's make_circles / make_moons); g(z) = W z + b is a
linear classifier (2 classes, W ~ N(0, 0.1^2), b = 0); L_sup is the softmax cross-entropy of g
on the labeled points (one per class); L_CCLP is ``ssl_bench_plugins.methods.cclp.cclp`` on [Z_L; Z_U];
CER (Grandvalet & Bengio 2005) is ``ssl_bench_plugins.methods.entmin.mean_entropy`` of g on the
unlabeled points. Z and (W, b) are updated together by plain full-batch gradient descent
(constant step, no momentum): under CCLP, g gets gradients from L_sup only (L_CCLP does not
depend on g); under CER from L_sup + w CER.

Experiments (``SETTINGS`` below; results/cclp_toys/README.md tabulates their parameters):

- ``circles_S10``: two circles, one labeled point per class, S = 10 (Fig. 2, main part).
- ``circles_cer``: the same data, labeled points and initial classifier, L_sup + w CER (Fig. 2,
  dashed box: the failure case).
- ``moons_S1`` / ``moons_S10``: two moons, one labeled point per class, S = 1 vs S = 10 (Fig. 3),
  the same data, labeled points, initial classifier, w and step; only S differs.

Choices where the paper is silent (its toy code is not published):

- Similarity: rho = -||z_i - z_j||^2 / sigma^2, i.e. ``cclp(Z / sigma, ...,
  kind="neg_sq_euclidean")`` (the plugin's similarity has no bandwidth; dividing the
  embeddings by sigma is one). The negative Euclidean distance is one of the options §3
  names; the dot product of the benchmarks is no locality measure for layouts centred on
  the origin (on two circles every point's most similar points are the outer ones in its
  direction). sigma is set so that neighbours along a circle / moon are strongly connected
  and the two structures are not (label propagation at iteration 0 is then right).
- The step of CCLP in graph units is lr * w / sigma^2 (the gradient with respect to Z is
  1 / sigma that with respect to Z / sigma): 2.2 for the circles, 2.8 for the moons. Larger
  steps make the dynamics coarser (more points of one class swept into the other cluster).
- Labeled points: one per class, drawn with the seed.
- Arrows: the negative gradient of each term as it enters the objective (L_sup, w L_CCLP,
  w CER) with respect to each point's coordinates. Lengths are proportional to the norm,
  per term and per panel: the 90th percentile of the term's norms in the panel is drawn at
  8% of the panel's width, arrows longer than twice that are capped. So directions, and
  relative sizes within one term and panel, are exact; lengths across terms or panels are
  not comparable (each panel's title gives each term's largest norm).
- Compactness (printed, written to compactness.json): with the true classes, ``spread`` =
  RMS distance of a class's points (labeled included) to their class centroid, averaged over
  the two classes; ``reach`` = the largest such distance; ``gap`` = distance between the two
  class centroids. ``spread / gap`` and ``reach / gap`` small mean one compact cluster per
  class, well apart: with ``reach / gap`` < 0.5 every point is nearer its own class's
  centroid than the other's; one point swept into the other class's cluster gives ~1.
  Also recorded: the accuracy of g on all points and, for CCLP, of label propagation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_bench_plugins.methods.cclp import cclp
from ssl_bench_plugins.methods.entmin import mean_entropy

CLASS_COLOURS = ("tab:red", "tab:blue")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One toy experiment."""
    name: str
    dataset: str  # "circles" | "moons"
    regulariser: str  # "cclp" | "cer"
    title: str
    steps: int = 10  # S of eq. 9 (CCLP only)
    n_points: int = 120
    noise: float = 0.03  # make_circles / make_moons noise (std of the Gaussian added to each coordinate)
    factor: float = 0.5  # make_circles: inner radius / outer radius
    bandwidth: float = 0.15  # sigma: rho = -||z_i - z_j||^2 / sigma^2
    lr: float = 0.05  # gradient-descent step, for Z and for (W, b)
    weight: float = 1.0  # w: L_sup + w L_reg
    iterations: int = 2000
    snapshots: tuple[int, ...] = (0, 200, 500, 800, 2000)
    similarity: str = "neg_sq_euclidean"
    smoothing: float = 1e-5


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("circles_S10", "circles", "cclp", "Two circles, 1 label per class: L_sup + w L_CCLP, S = 10"),
    Setting("circles_cer", "circles", "cer", "Two circles, 1 label per class: L_sup + w CER (failure case)"),
    Setting("moons_S1", "moons", "cclp", "Two moons, 1 label per class: L_sup + w L_CCLP, S = 1", steps=1,
            bandwidth=1 / 15, weight=0.25, snapshots=(0, 100, 500, 1000, 2000)),
    Setting("moons_S10", "moons", "cclp", "Two moons, 1 label per class: L_sup + w L_CCLP, S = 10", steps=10,
            bandwidth=1 / 15, weight=0.25, snapshots=(0, 100, 500, 1000, 2000)),
)}


@dataclasses.dataclass
class Snapshot:
    iteration: int
    z: np.ndarray  # N x 2, labeled points first
    grad_sup: np.ndarray  # N x 2, d L_sup / d z (zero for unlabeled points)
    grad_reg: np.ndarray  # N x 2, d (w L_reg) / d z
    weight: np.ndarray  # 2 x 2 classifier weight
    bias: np.ndarray  # 2
    phi: np.ndarray | None  # N x 2 label-propagation posteriors (CCLP only)
    loss_sup: float
    loss_reg: float


@dataclasses.dataclass
class Trajectory:
    setting: Setting
    seed: int
    y: np.ndarray  # true classes, labeled points first
    n_labeled: int
    snapshots: list[Snapshot]
    start: dict
    end: dict
    seconds: float


def make_data(setting: Setting, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(x, y, n_labeled): the layout, its classes, labeled points first (one per class)."""
    from sklearn.datasets import make_circles, make_moons
    if setting.dataset == "circles":
        x, y = make_circles(setting.n_points, noise=setting.noise, factor=setting.factor, random_state=seed)
    elif setting.dataset == "moons":
        x, y = make_moons(setting.n_points, noise=setting.noise, random_state=seed)
        x = x - x.mean(0)
    else:
        raise ValueError(f"unknown data set {setting.dataset!r}")
    rng = np.random.default_rng(seed)
    labeled = [int(rng.choice(np.flatnonzero(y == c))) for c in (0, 1)]
    order = np.concatenate([labeled, [i for i in range(len(y)) if i not in labeled]])
    return x[order], y[order], len(labeled)


def compactness(z: np.ndarray, y: np.ndarray) -> dict:
    """Within-class spread vs between-class distance, with the true classes."""
    centroids = np.stack([z[y == c].mean(0) for c in (0, 1)])
    dist = [np.linalg.norm(z[y == c] - centroids[c], axis=1) for c in (0, 1)]
    spread = float(np.mean([np.sqrt((d ** 2).mean()) for d in dist]))
    reach = float(max(d.max() for d in dist))
    gap = float(np.linalg.norm(centroids[0] - centroids[1]))
    return {"spread": spread, "reach": reach, "gap": gap, "spread_over_gap": spread / gap,
            "reach_over_gap": reach / gap}


def _losses(setting: Setting, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y_l: torch.Tensor, n_l: int):
    logits = z @ w.T + b
    loss_sup = F.cross_entropy(logits[:n_l], y_l)
    phi = None
    if setting.regulariser == "cclp":
        u = z / setting.bandwidth
        result = cclp(u[:n_l], y_l, u[n_l:], 2, steps=setting.steps, smoothing=setting.smoothing,
                      kind=setting.similarity)
        loss_reg, phi = result.loss, result.phi
    elif setting.regulariser == "cer":
        loss_reg = mean_entropy(logits[n_l:])
    else:
        raise ValueError(f"unknown regulariser {setting.regulariser!r}")
    return loss_sup, setting.weight * loss_reg, phi


def train(setting: Setting, seed: int = 0) -> Trajectory:
    """Gradient descent on L_sup + w L_reg over (Z, W, b); snapshots at ``setting.snapshots``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    started = time.perf_counter()
    x, y, n_l = make_data(setting, seed)
    z = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    w = (0.1 * torch.randn(2, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    y_l = torch.as_tensor(y[:n_l], dtype=torch.long)
    params = [z, w, b]
    snapshots = []
    wanted = {0, setting.iterations} | {i for i in setting.snapshots if i <= setting.iterations}
    for it in range(setting.iterations + 1):
        loss_sup, loss_reg, phi = _losses(setting, z, w, b, y_l, n_l)
        if not (torch.isfinite(loss_sup) and torch.isfinite(loss_reg)):
            raise FloatingPointError(f"{setting.name}: loss not finite at iteration {it}")
        if it in wanted:
            g_sup = torch.autograd.grad(loss_sup, z, retain_graph=True)[0]
            g_reg = torch.autograd.grad(loss_reg, z, retain_graph=True)[0]
            snapshots.append(Snapshot(it, z.detach().numpy().copy(), g_sup.numpy(), g_reg.numpy(),
                                      w.detach().numpy().copy(), b.detach().numpy().copy(),
                                      None if phi is None else phi.detach().numpy().copy(),
                                      float(loss_sup.detach()), float(loss_reg.detach())))
        if it == setting.iterations:
            break
        grads = torch.autograd.grad(loss_sup + loss_reg, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= setting.lr * g
    first, last = snapshots[0], snapshots[-1]
    return Trajectory(setting, seed, y, n_l, snapshots, summary(first, y), summary(last, y),
                      time.perf_counter() - started)


def summary(snap: Snapshot, y: np.ndarray) -> dict:
    """Compactness, accuracy of g on all points, accuracy of label propagation (CCLP)."""
    out = compactness(snap.z, y)
    out["g_accuracy"] = float(((snap.z @ snap.weight.T + snap.bias).argmax(1) == y).mean())
    if snap.phi is not None:
        out["lp_accuracy"] = float((snap.phi.argmax(1) == y).mean())
    return out


def _arrows(ax, z, grad, colour, span, label):
    """Negative gradients. Lengths are proportional to the gradient's norm, with the 90th
    percentile of the norms (of this term, in this panel) drawn at 8% of the panel's span and
    anything longer than 2x that capped (so that a few large gradients do not hide the rest).
    Returns the largest norm."""
    norms = np.linalg.norm(grad, axis=1)
    top = float(norms.max())
    if top <= 0:
        return 0.0
    shown = norms > 1e-3 * top
    ref = float(np.quantile(norms[shown], 0.9))
    length = np.minimum(norms[shown] / ref, 2.0) * 0.08 * span
    d = -grad[shown] / norms[shown, None] * length[:, None]
    ax.quiver(z[shown, 0], z[shown, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
              color=colour, width=0.005, headwidth=3.5, headlength=4, headaxislength=3.5, zorder=3, label=label)
    return top


def _square(ax, z):
    """Square, equal-aspect limits around the points, 12.5% margin on each side."""
    lo, hi = z.min(0), z.max(0)
    span = float(max(hi - lo))
    centre, half = (lo + hi) / 2, 0.625 * span
    ax.set_xlim(centre[0] - half, centre[0] + half), ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
    return span, centre, half


def plot(traj: Trajectory, path: Path) -> Path:
    """One row of panels: [label propagation at iteration 0 (CCLP)] + one panel per snapshot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    s, y, n_l = traj.setting, traj.y, traj.n_labeled
    lp = s.regulariser == "cclp"
    reg_name = "w L_CCLP" if lp else "w CER"
    cols = len(traj.snapshots) + lp
    fig, axes = plt.subplots(1, cols, figsize=(3.3 * cols, 4.9), squeeze=False)
    axes = list(axes[0])
    colours = np.array(CLASS_COLOURS)[y]
    if lp:
        ax, snap = axes.pop(0), traj.snapshots[0]
        ax.scatter(snap.z[n_l:, 0], snap.z[n_l:, 1], c=snap.phi[n_l:, 1], cmap="coolwarm_r", vmin=0, vmax=1,
                   s=16, edgecolors="none")
        ax.scatter(snap.z[:n_l, 0], snap.z[:n_l, 1], c=colours[:n_l], s=130, marker="*", edgecolors="k",
                   linewidths=0.8, zorder=4)
        wrong = int((snap.phi[n_l:].argmax(1) != y[n_l:]).sum())
        ax.set_title(f"label propagation at iteration 0\ncolour: phi (red = class 0, blue = class 1)\n"
                     f"{wrong} of {len(y) - n_l} unlabeled points wrong", fontsize=9)
        _square(ax, snap.z)
        ax.set_xticks([]), ax.set_yticks([])
    for ax, snap in zip(axes, traj.snapshots):
        z = snap.z
        span, centre, half = _square(ax, z)
        ax.scatter(z[n_l:, 0], z[n_l:, 1], c=colours[n_l:], s=16, alpha=0.7, edgecolors="none", zorder=2)
        ax.scatter(z[:n_l, 0], z[:n_l, 1], c=colours[:n_l], s=130, marker="*", edgecolors="k", linewidths=0.8,
                   zorder=5)
        top_reg = _arrows(ax, z, snap.grad_reg, "black", span, reg_name)
        top_sup = _arrows(ax, z[:n_l], snap.grad_sup[:n_l], "gold", span, "L_sup")
        # decision boundary of g: (w_1 - w_0) . z + (b_1 - b_0) = 0
        dw, db = snap.weight[1] - snap.weight[0], snap.bias[1] - snap.bias[0]
        if abs(dw[1]) >= abs(dw[0]):
            xs = centre[0] + np.array([-half, half])
            ax.plot(xs, -(dw[0] * xs + db) / dw[1], "k--", lw=0.8, zorder=1)
        else:
            ys = centre[1] + np.array([-half, half])
            ax.plot(-(dw[1] * ys + db) / dw[0], ys, "k--", lw=0.8, zorder=1)
        ax.set_xlim(centre[0] - half, centre[0] + half), ax.set_ylim(centre[1] - half, centre[1] + half)
        m = summary(snap, y)
        for c in (0, 1):  # a class gathered in a small blob: say how many points it holds
            members = z[y == c]
            radius = np.sqrt(((members - members.mean(0)) ** 2).sum(1).mean())
            if radius < 0.08 * span:
                at = members.mean(0)
                left = at[0] > centre[0]  # write towards the middle of the panel
                ax.annotate(f"{len(members)} points\nRMS {radius:.2g}", at, xytext=(-12 if left else 12, -4),
                            textcoords="offset points", fontsize=7.5, color=CLASS_COLOURS[c], va="top",
                            ha="right" if left else "left")
        ax.set_title(f"iteration {snap.iteration}\nmax |grad|: L_sup {top_sup:.2g}, {reg_name} {top_reg:.2g}\n"
                     f"spread/gap {m['spread_over_gap']:.2f}, reach/gap {m['reach_over_gap']:.2f}, "
                     f"acc(g) {100 * m['g_accuracy']:.0f}%", fontsize=8.5)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [Line2D([], [], ls="", marker="o", color=CLASS_COLOURS[0], label="class 0 (unlabeled)"),
               Line2D([], [], ls="", marker="o", color=CLASS_COLOURS[1], label="class 1 (unlabeled)"),
               Line2D([], [], ls="", marker="*", color="grey", markeredgecolor="k", markersize=11,
                      label="labeled (1 per class)"),
               Line2D([], [], color="gold", lw=2, label="-grad L_sup (labeled points)"),
               Line2D([], [], color="black", lw=2, label=f"-grad {reg_name}"),
               Line2D([], [], color="black", ls="--", lw=0.8, label="decision boundary of g")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8.5, frameon=False)
    graph = f"S = {s.steps}, sigma = {s.bandwidth:.3g}, " if lp else ""
    fig.suptitle(f"{s.title}\n{s.n_points} points, {graph}w = {s.weight:g}, gradient descent lr = {s.lr:g}, "
                 f"seed {traj.seed}. Arrows: negative gradients w.r.t. each point, lengths scaled per term "
                 f"and panel", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(out: Path, seed: int = 0, names=None, **overrides) -> dict[str, dict]:
    """Train and draw each setting (``overrides`` replace Setting fields in all of them);
    returns {name: {"png", "start", "end", "seconds", "setting"}} and prints one line each."""
    results = {}
    for name in names or SETTINGS:
        setting = dataclasses.replace(SETTINGS[name], **overrides)
        traj = train(setting, seed)
        png = plot(traj, Path(out) / f"{name}.png")
        results[name] = {"png": str(png), "start": traj.start, "end": traj.end, "seconds": traj.seconds,
                         "setting": dataclasses.asdict(setting)}
        st, en = traj.start, traj.end
        print(f"{name:12s} spread/gap {st['spread_over_gap']:6.3f} -> {en['spread_over_gap']:6.3f}   "
              f"reach/gap {st['reach_over_gap']:6.3f} -> {en['reach_over_gap']:6.3f}   "
              f"(spread {en['spread']:.3g}, reach {en['reach']:.3g}, gap {en['gap']:.3g})   "
              f"acc(g) {100 * en['g_accuracy']:.0f}%   {traj.seconds:.1f} s",
              flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/cclp_toys"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="run only these experiments")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run(args.out, args.seed, args.only)
    (args.out / "compactness.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
