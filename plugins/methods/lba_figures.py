"""The association figure of Learning by Association (Fig. 2 of Haeusser et al. 2017).

Top row: labeled samples A (2 per class, from the run's labeled set); middle row: unlabeled
samples B (drawn from the run's unlabeled set); bottom row: A again. A line from A_i down to
B_j is drawn with opacity P^ab_ij, a line from B_j down to A_k with opacity P^ba_jk (the round
trip A -> B -> A), relative to the strongest transition of each row; B is ordered by the
model's predicted class. A trained model shows each labeled sample visiting unlabeled samples of
its class and walking back to its class.
"""
from __future__ import annotations

import torch

from ssl_bench.figures import FigureView, show
from ssl_bench_plugins.methods.association import associate


def association(view: FigureView, per_class: int = 2, n_unlabeled: int = 20):
    import matplotlib.pyplot as plt

    data = view.data
    labeled = torch.cat([data.labeled[data.labeled_classes == c][:per_class] for c in range(data.num_classes)])
    pool = data.unlabeled if len(data.unlabeled) else data.labeled
    source = data.unlabeled_x if len(data.unlabeled) else data.train_x
    unlabeled = pool[torch.randperm(len(pool), generator=view.generator, device=pool.device)[:n_unlabeled]]
    x_a, x_b = data.train_x[labeled], source[unlabeled]
    with torch.no_grad():
        b = view.embed(x_b)
        x_b = x_b[view.model.head(b).argmax(1).argsort(stable=True)]  # B ordered by predicted class: readable lines
        result = associate(view.embed(x_a), view.embed(x_b), data.train_y[labeled])
    # opacity relative to each row's strongest transition, so every sample's walk is visible
    p_ab = (result.p_ab / result.p_ab.max(1, keepdim=True).values).cpu()
    p_ba = (result.p_ba / result.p_ba.max(1, keepdim=True).values).cpu()

    n_a, n_b = len(x_a), len(x_b)
    width = max(n_a, n_b)
    fig, ax = plt.subplots(figsize=(0.45 * width + 1.5, 3.4))
    rows = {"A": 2.6, "B": 1.3, "A'": 0.0}
    unit_ratio = (fig.get_size_inches()[0] / width) / (fig.get_size_inches()[1] / 3.2)  # square thumbnails

    def centre(i: int, n: int) -> float:
        return (i + 0.5) * width / n

    for i in range(n_a):
        for j in range(n_b):
            ax.plot([centre(i, n_a), centre(j, n_b)], [rows["A"], rows["B"] + 0.4], color="tab:green",
                    alpha=float(p_ab[i, j]), lw=1)
    for j in range(n_b):
        for k in range(n_a):
            ax.plot([centre(j, n_b), centre(k, n_a)], [rows["B"], rows["A'"] + 0.4], color="tab:red",
                    alpha=float(p_ba[j, k]), lw=1)
    for row, images, n in (("A", x_a, n_a), ("B", x_b, n_b), ("A'", x_a, n_a)):
        for i in range(n):
            x = centre(i, n) - 0.2
            show(ax, images[i], extent=(x, x + 0.4, rows[row], rows[row] + 0.4 * unit_ratio))
    ax.set_aspect("auto")
    ax.set_xlim(0, width)
    ax.set_ylim(-0.1, 3.1)
    ax.set_yticks([rows["A'"] + 0.2, rows["B"] + 0.2, rows["A"] + 0.2], ["A (return)", "B unlabeled", "A labeled"])
    ax.set_xticks([])
    walk = result.correct_walk_probability(data.train_y[labeled].cpu()).item()
    ax.set_title(f"{view.title}\nP(correct round trip) = {walk:.3f}; opacity = transition probability / row maximum",
                 fontsize=8)
    fig.tight_layout()
    return fig
