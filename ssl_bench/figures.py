"""Qualitative figures of a trained run, saved as PNG (``ssl-bench figure KIND``).

The core draws what every model has, an embedding: ``neighbours`` shows, for query images from
the run's unlabeled set, their nearest training images by cosine similarity of the embeddings
(as Fig. 4 of the LbA paper). Methods add their own kinds through ``Method.figures()`` (LbA:
``association``, Fig. 2).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .data import DeviceData, ImageDataset, Subsets
from .errors import UserError


@dataclasses.dataclass
class FigureView:
    """What a figure function gets: the trained network (eval mode), the run's data on the
    device, the raw data set (uint8 images for display), its subsets and a seeded generator."""

    model: torch.nn.Module
    data: DeviceData
    dataset: ImageDataset
    subsets: Subsets
    generator: torch.Generator
    title: str

    @torch.no_grad()
    def embed(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.data.normalise(images_uint8.to(self.data.device)))


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


CORE_FIGURES = {"neighbours": neighbours}


def available(method_cls) -> dict:
    return {**CORE_FIGURES, **method_cls.figures()}


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw(kind: str, method_cls, view: FigureView, path: Path) -> Path:
    kinds = available(method_cls)
    if kind not in kinds:
        raise UserError(f"no figure {kind!r} for method {method_cls.name!r}; available: {', '.join(sorted(kinds))}")
    import matplotlib

    matplotlib.use("Agg")
    return save(kinds[kind](view), path)


def figure_for_run(prepared, registry, run_prefix: str, kind: str, *, out: Path, device: torch.device,
                   train: bool = False, path: Path | None = None, log=print) -> Path:
    """Draw figure ``kind`` for the run of ``prepared`` whose id starts with ``run_prefix``, from
    its saved network (``ssl-bench run --save-models``), or, with ``train``, after training it
    now (deterministic: the same network the grid would produce on this device)."""
    from . import results
    from .data import data_key
    from .engine import build_method, build_model, plan_run, train_run

    grid = prepared.grid
    matches = [run for run in prepared.runs if run.run_id.startswith(run_prefix)]
    if len(matches) != 1:
        raise UserError(f"{'no' if not matches else 'more than one'} run of grid {grid.name!r} matches "
                        f"{run_prefix!r} (`ssl-bench run --grid {grid.name} --dry-run` lists the ids)")
    run = matches[0]
    cfg = run.config
    method_cls = registry.method(cfg["method"])
    if kind not in available(method_cls):
        raise UserError(f"no figure {kind!r} for method {method_cls.name!r}; "
                        f"available: {', '.join(sorted(available(method_cls)))}")
    data = prepared.datasets[data_key(cfg, registry)]
    plan = plan_run(cfg, registry, data)
    dataset = plan.domains[plan.labeled_domain]
    weights = results.models_dir(out, grid.name) / f"{run.run_id}.pt"
    if weights.exists():
        model = build_model(cfg, registry, dataset, plan.num_outputs, build_method(cfg, registry))
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    elif train:
        log(f"training run {run.run_id} for the figure ({cfg['steps']} steps)")
        outcome = train_run(cfg, registry, data, device)
        if outcome.status != "ok":
            raise UserError(f"run {run.run_id} did not train: {outcome.status}: {outcome.error}")
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
    title = f"{grid.name} run {run.run_id}: {cfg['method']} on {cfg['dataset']}, n_labeled={cfg['n_labeled']}, " \
            f"n_unlabeled={cfg['n_unlabeled']}, seed={cfg['seed']}"
    view = FigureView(model, data, dataset, subsets, generator, title)
    path = path or Path(out) / grid.name / "figures" / f"{run.run_id}_{kind}.png"
    return draw(kind, method_cls, view, path)
