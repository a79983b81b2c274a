"""Qualitative figures of a trained run, saved as PNG (``ssl-bench figure KIND``).

The core draws what every model has, an embedding, on the data its task gives it:

- ``neighbours``: for query images from the run's unlabeled set, their nearest training images
  by cosine similarity of the embeddings (as Fig. 4 of the LbA paper).
- ``tsne``: a 2-D t-SNE map of the embeddings of the run's test images, one marker per domain
  and one colour per class (the dissertation's chapter 4 figure for associative domain
  adaptation: perplexity 35, 1,000 test embeddings per domain, source vs target). The domains
  are those the run's task evaluates on the test split (``Plan.eval_sets``): a
  domain-adaptation run has two (source and target); a run of any other task has one (its
  data set's test images; retrieval: its held-out query images), which is still a map of how
  the classes separate. So it is a core kind (every run has a plan), not a task's.

Methods add their own kinds through ``Method.figures()`` (LbA: ``association``, Fig. 2). A
figure function is ``draw(view: FigureView, **keywords) -> matplotlib Figure``; its typed
keyword arguments are the figure's settings (``ssl-bench figure KIND --arg KEY=VALUE``),
validated like a method's hyperparameters before anything trains.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .data import DeviceData, Domain, ImageDataset, Subsets
from .errors import UserError
from .task import Plan


@dataclasses.dataclass
class FigureView:
    """What a figure function gets: the trained network (eval mode), the run's data on the
    device, the raw data set (uint8 images for display), its subsets, a generator seeded with
    the run's seed, the title, the task's plan of the run (its domains and evaluation sets) and
    the run's seed."""

    model: torch.nn.Module
    data: DeviceData
    dataset: ImageDataset
    subsets: Subsets
    generator: torch.Generator
    title: str
    plan: Plan
    seed: int
    #: the run's method: its :meth:`~ssl_bench.Method.embed` gives the embeddings (None: ``model.embed``)
    method: Any = None

    @torch.no_grad()
    def embed(self, images_uint8: torch.Tensor, domain: Domain | None = None, chunk: int = 1000) -> torch.Tensor:
        """Embeddings of uint8 images, normalised as ``domain``'s (default: the labeled domain's)."""
        normalise = (domain or self.data.domain).normalise
        x = images_uint8.to(self.data.device)
        embed = self.model.embed if self.method is None else (lambda inputs: self.method.embed(self.model, inputs))
        return torch.cat([embed(normalise(x[i:i + chunk])) for i in range(0, max(len(x), 1), chunk)])

    def domain(self, role: str) -> Domain:
        """The run's data set in role ``role`` (a key of ``plan.domains``) on the device."""
        if role == self.plan.labeled_domain:
            return self.data.domain
        if role == self.plan.unlabeled_domain:
            return self.data.unlabeled_domain
        return Domain(self.plan.domains[role], self.data.device)

    def test_sets(self) -> list["TestSet"]:
        """The run's test images per domain as its task evaluates them: for each domain of the
        plan's evaluation sets on the test split (first set per domain; its ``indices`` and
        evaluation labels applied), the labeled domain first. Domain adaptation: source and
        target; other tasks: one."""
        sets, seen = [], set()
        for spec in self.plan.eval_sets:
            if spec.split != "test" or spec.domain in seen:
                continue
            seen.add(spec.domain)
            domain = self.domain(spec.domain)
            x, y = domain.test_x, domain.test_y
            if spec.indices is not None:
                idx = torch.as_tensor(spec.indices, device=x.device)
                x, y = x[idx], y[idx]
            labels = self.plan.eval_labels.get(spec.name)
            if labels is not None:
                y = torch.as_tensor(labels, device=x.device)
            sets.append(TestSet(spec.domain, self.plan.domains[spec.domain].name, domain, x, y))
        sets.sort(key=lambda s: s.role != self.plan.labeled_domain)  # stable: the labeled domain first
        return sets


@dataclasses.dataclass
class TestSet:
    """One domain's test images (uint8, on the device) and labels, with the domain that normalises them."""

    role: str
    dataset: str
    domain: Domain
    x: torch.Tensor
    y: torch.Tensor


def to_display(image: torch.Tensor) -> np.ndarray:
    """uint8 C x H x W -> H x W (grey) or H x W x 3 for imshow."""
    array = image.cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def show(ax, image: torch.Tensor, extent=None) -> None:
    kwargs = {"cmap": "gray", "vmin": 0, "vmax": 255} if image.shape[0] == 1 else {}
    ax.imshow(to_display(image), extent=extent, **kwargs)


def neighbours(view: FigureView, queries: int = 8, k: int = 5):
    """Rows: a query image from the unlabeled set, then its k nearest training images by cosine
    similarity of the embeddings (the similarity in each image's corner); LbA Fig. 4."""
    import matplotlib.pyplot as plt

    pool = view.data.train_x
    embeddings = torch.nn.functional.normalize(
        torch.cat([view.embed(pool[i:i + 1000]) for i in range(0, len(pool), 1000)]), dim=1)
    candidates = view.data.unlabeled if len(view.data.unlabeled) else torch.arange(len(pool), device=pool.device)
    pick = candidates[torch.randperm(len(candidates), generator=view.generator, device=candidates.device)[:queries]]
    query_x = view.data.unlabeled_x[pick]
    query_e = torch.nn.functional.normalize(view.embed(query_x), dim=1)
    similarity = query_e @ embeddings.T
    if view.data.unlabeled_x is view.data.train_x:
        similarity[torch.arange(len(pick)), pick] = -2.0  # a query is not its own neighbour
    top = similarity.topk(k, dim=1)
    fig, axes = plt.subplots(len(pick), k + 1, figsize=(1.2 * (k + 1), 1.2 * len(pick)), squeeze=False)
    for row in range(len(pick)):
        show(axes[row, 0], query_x[row])
        for col in range(k):
            ax = axes[row, col + 1]
            show(ax, pool[top.indices[row, col]])
            ax.text(0.02, 0.98, f"{top.values[row, col].item():.2f}", transform=ax.transAxes, va="top",
                    ha="left", fontsize=7, color="yellow", backgroundcolor="black")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("query", fontsize=8)
    axes[0, 1].set_title(f"{k} nearest (cosine)", fontsize=8, loc="left")
    fig.suptitle(view.title, fontsize=8)
    fig.tight_layout()
    return fig


#: the dissertation's chapter 4 figure: "t-SNE (perplexity 35) of 1000 test embeddings" per domain
TSNE_PERPLEXITY = 35.0
TSNE_PER_DOMAIN = 1000


@dataclasses.dataclass
class TsnePoints:
    """What the ``tsne`` figure draws: ``points`` (N x 2, float), and per point its domain
    (index into ``domains``, the names "ROLE (DATASET)") and class (``labels``, int64)."""

    points: np.ndarray
    domain: np.ndarray
    labels: np.ndarray
    domains: list[str]
    perplexity: float
    seed: int

    def count(self, domain: int) -> int:
        return int((self.domain == domain).sum())


def tsne_points(view: FigureView, n: int = TSNE_PER_DOMAIN, perplexity: float = TSNE_PERPLEXITY) -> TsnePoints:
    """The 2-D t-SNE map of ``n`` test embeddings per domain (all of a domain's test images if it
    has fewer), as in the dissertation's chapter 4 figure (perplexity 35, 1,000 per domain).

    The images are a seeded choice: uniform without replacement from a generator seeded with the
    run's seed, domain after domain (``view.test_sets()``: source, then target), so the same run
    gives the same points. Each domain is normalised with its own statistics, as in training and
    evaluation. scikit-learn's ``TSNE(n_components=2, perplexity=perplexity, init="pca",
    learning_rate="auto", random_state=seed)`` (Barnes-Hut, its default iterations) embeds all
    domains together, in one map."""
    from sklearn.manifold import TSNE

    if n < 1:
        raise UserError(f"figure tsne: n = {n}: give at least 1 embedding per domain")
    sets = view.test_sets()
    device = view.data.device
    generator = torch.Generator(device=device)
    generator.manual_seed(view.seed)
    embeddings, domains, labels = [], [], []
    for k, test in enumerate(sets):
        pick = torch.randperm(len(test.x), generator=generator, device=device)[:n].to(test.x.device)
        embeddings.append(view.embed(test.x[pick], test.domain).float().cpu().numpy())
        labels.append(test.y[pick].cpu().numpy().astype(np.int64))
        domains.append(np.full(len(pick), k, dtype=np.int64))
    total = sum(len(e) for e in embeddings)
    if not 0 < perplexity < total:
        raise UserError(f"figure tsne: perplexity {perplexity:g} must be positive and less than the number of "
                        f"points ({total}: {' + '.join(str(len(e)) for e in embeddings)} test embeddings); "
                        f"lower --arg perplexity or raise --arg n")
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=view.seed).fit_transform(np.concatenate(embeddings))
    return TsnePoints(points=np.asarray(points), domain=np.concatenate(domains), labels=np.concatenate(labels),
                      domains=[f"{s.role} ({s.dataset})" for s in sets], perplexity=float(perplexity),
                      seed=view.seed)


#: marker and opacity per domain (source, target, ...): source faint circles, target crosses
DOMAIN_STYLES = (("o", 0.3), ("x", 0.75), ("s", 0.5), ("^", 0.5))


def tsne(view: FigureView, n: int = TSNE_PER_DOMAIN, perplexity: float = TSNE_PERPLEXITY):
    """One scatter of :func:`tsne_points`: colour = class, marker and opacity = domain (source:
    faint circles, target: crosses). Aligned domains put the target's crosses on the source's
    circles of the same colour; a domain gap shows as separate clouds (dissertation, ch. 4)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    result = tsne_points(view, n, perplexity)
    classes = int(max(view.data.num_classes, result.labels.max(initial=-1) + 1))
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    for k, name in enumerate(result.domains):
        marker, alpha = DOMAIN_STYLES[k % len(DOMAIN_STYLES)]
        mask = result.domain == k
        colours = cmap(result.labels[mask] % cmap.N)
        ax.scatter(result.points[mask, 0], result.points[mask, 1], c=colours, marker=marker, alpha=alpha,
                   s=12 if marker != "x" else 14, linewidths=0.8 if marker == "x" else 0)
    domain_handles = [Line2D([], [], linestyle="", marker=DOMAIN_STYLES[k % len(DOMAIN_STYLES)][0], color="0.3",
                             alpha=min(1.0, 2 * DOMAIN_STYLES[k % len(DOMAIN_STYLES)][1]),
                             label=f"{name}: {result.count(k)}") for k, name in enumerate(result.domains)]
    first = ax.legend(handles=domain_handles, loc="upper left", fontsize=7, title="domain", title_fontsize=7)
    ax.add_artist(first)
    if classes <= 20:
        class_handles = [Line2D([], [], linestyle="", marker="s", color=cmap(c % cmap.N), label=str(c))
                         for c in range(classes)]
        ax.legend(handles=class_handles, loc="upper right", fontsize=6, title="class", title_fontsize=7,
                  ncol=2 if classes > 10 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{view.title}\nt-SNE of test embeddings (perplexity {result.perplexity:g}, init pca, "
                 f"random_state {result.seed}); colour = class, marker = domain", fontsize=8)
    fig.tight_layout()
    return fig


CORE_FIGURES = {"neighbours": neighbours, "tsne": tsne}


def available(method_cls) -> dict:
    """The figure kinds of a run of ``method_cls``: the core's and the method's."""
    return {**CORE_FIGURES, **method_cls.figures()}


def figure_settings(kind: str, fn: Callable, args: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of figure ``kind`` from ``--arg KEY=VALUE`` settings, checked
    against the figure function's typed keywords (UserError naming the key otherwise)."""
    if not args:
        return {}
    from .params import params_of_function, validate

    return validate(params_of_function(fn, skip=("view",)), args, f"figures.{kind}.")


def figure_kind(kind: str, method_cls, args: dict[str, Any] | None = None) -> tuple[Callable, dict[str, Any]]:
    """The figure function of ``kind`` for a run of ``method_cls`` and its checked settings."""
    kinds = available(method_cls)
    if kind not in kinds:
        raise UserError(f"no figure {kind!r} for method {method_cls.name!r}; available: {', '.join(sorted(kinds))}")
    return kinds[kind], figure_settings(kind, kinds[kind], args)


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw(kind: str, method_cls, view: FigureView, path: Path, args: dict[str, Any] | None = None) -> Path:
    fn, settings = figure_kind(kind, method_cls, args)
    import matplotlib

    matplotlib.use("Agg")
    return save(fn(view, **settings), path)


def find_run(prepared, run_prefix: str):
    """The run of ``prepared`` whose id starts with ``run_prefix`` (UserError: none or several)."""
    grid = prepared.grid
    matches = [run for run in prepared.runs if run.run_id.startswith(run_prefix)]
    if len(matches) != 1:
        raise UserError(f"{'no' if not matches else 'more than one'} run of grid {grid.name!r} matches "
                        f"{run_prefix!r} (`ssl-bench run --grid {grid.name} --dry-run` lists the ids)")
    return matches[0]


def view_for_run(prepared, registry, run, *, out: Path, device: torch.device, train: bool = False,
                 log=print) -> FigureView:
    """The :class:`FigureView` of ``run`` (of ``prepared``): its network from
    ``OUT/GRID/models/RUN.pt`` (``ssl-bench run --save-models``), or, with ``train``, trained
    now (deterministic: the same network the grid would produce on this device) and saved there."""
    from . import results
    from .data import data_key
    from .engine import build_method, build_model, plan_run, train_run

    grid = prepared.grid
    cfg = run.config
    data = prepared.datasets[data_key(cfg, registry)]
    plan = plan_run(cfg, registry, data)
    dataset = plan.domains[plan.labeled_domain]
    weights = results.models_dir(out, grid.name) / f"{run.run_id}.pt"
    method = build_method(cfg, registry)
    if weights.exists():
        model = build_model(cfg, registry, dataset, plan.num_outputs, method)
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    elif train:
        log(f"training run {run.run_id} for the figure ({cfg['steps']} steps)")
        outcome = train_run(cfg, registry, data, device)
        if outcome.status != "ok":
            raise UserError(f"run {run.run_id} did not train: {outcome.status}: {outcome.error}")
        final = outcome.metrics.get("test_error")
        if final is not None:  # to compare with the grid's row of this run (equal on the same kind of device)
            log(f"trained run {run.run_id}: final test_error {final:.2f}%")
        model = outcome.model
        results.save_model_atomic(model.state_dict(), weights)
    else:
        raise UserError(f"no saved network for run {run.run_id} in {weights.parent}: run the grid with "
                        f"`ssl-bench run --save-models`, or add --train to train this run now")
    model = model.to(device).eval()
    subsets = plan.subsets
    data = DeviceData(dataset, subsets, device, cfg["seed"], labels=plan.labels,
                      unlabeled_dataset=plan.domains[plan.unlabeled_domain], unlabeled_from_pool=plan.unlabeled_from_pool)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg["seed"])
    target = f" -> {cfg['target']}" if cfg.get("target") else ""
    title = f"{grid.name} run {run.run_id}: {cfg['method']} on {cfg['dataset']}{target}, " \
            f"n_labeled={cfg['n_labeled']}, n_unlabeled={cfg['n_unlabeled']}, seed={cfg['seed']}"
    return FigureView(model, data, dataset, subsets, generator, title, plan, cfg["seed"], method)


def figure_for_run(prepared, registry, run_prefix: str, kind: str, *, out: Path, device: torch.device,
                   train: bool = False, path: Path | None = None, log=print,
                   args: dict[str, Any] | None = None) -> Path:
    """Draw figure ``kind`` (settings ``args``: the figure function's keywords) for the run of
    ``prepared`` whose id starts with ``run_prefix``, from its saved network or, with ``train``,
    after training it now (:func:`view_for_run`). The kind and its settings are checked first."""
    run = find_run(prepared, run_prefix)
    fn, settings = figure_kind(kind, registry.method(run.config["method"]), args)
    view = view_for_run(prepared, registry, run, out=out, device=device, train=train, log=log)
    path = path or Path(out) / prepared.grid.name / "figures" / f"{run.run_id}_{kind}.png"
    import matplotlib

    matplotlib.use("Agg")
    return save(fn(view, **settings), path)
