"""`ssl-bench figure`: qualitative PNGs of a trained run (core neighbours and tsne, LbA association)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import cli, write_grid
from ssl_bench import UserError
from ssl_bench.figures import find_run, tsne_points, view_for_run
from ssl_bench.registry import registry
from ssl_bench.runner import prepare

GRID = """
name = "fig"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
steps = 5
eval_every = 5
labeled_per_class = 2
unlabeled_batch = 20
n_labeled = 20
n_unlabeled = 100
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
"""


def run_id(grid):
    proc = cli("run", "--grid", str(grid), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[0].split("\t")[0]


def test_figures_from_saved_network_and_errors(tmp_path):
    grid = write_grid(tmp_path, GRID)
    out = tmp_path / "out"
    rid = run_id(grid)
    # no network saved and no --train: a clear error, nothing written
    proc = cli("figure", "association", "--grid", str(grid), "--run", rid[:6], "--out", str(out))
    assert proc.returncode == 2
    assert "no saved network for run" in proc.stderr and "--save-models" in proc.stderr
    assert not out.exists()

    proc = cli("run", "--grid", str(grid), "--out", str(out), "--save-models", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (out / "fig" / "models" / f"{rid}.pt").is_file()
    for kind in ("association", "neighbours"):
        proc = cli("figure", kind, "--grid", str(grid), "--run", rid[:6], "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        png = out / "fig" / "figures" / f"{rid}_{kind}.png"
        assert proc.stdout.strip() == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    proc = cli("figure", "umap", "--grid", str(grid), "--run", rid, "--out", str(out))
    assert proc.returncode == 2
    assert "no figure 'umap' for method 'lba'; available: association, neighbours, tsne" in proc.stderr


def test_figure_trains_the_run_when_asked(tmp_path):
    grid = write_grid(tmp_path, GRID.replace('method = "lba"', 'method = "supervised"'))
    out = tmp_path / "out"
    rid = run_id(grid)
    png = tmp_path / "n.png"
    proc = cli("figure", "neighbours", "--grid", str(grid), "--run", rid, "--out", str(out), "--train", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "training run" in proc.stderr and png.is_file()
    assert (out / "fig" / "models" / f"{rid}.pt").is_file()
    # supervised has no association figure
    proc = cli("figure", "association", "--grid", str(grid), "--run", rid, "--out", str(out))
    assert proc.returncode == 2 and "available: neighbours, tsne" in proc.stderr


def test_plot_metric_against_a_setting(tmp_path):
    grid = write_grid(tmp_path, GRID.replace("n_labeled = 20\n", "") + "[axes]\nn_labeled = [20, 50]\nseed = [0, 1]\n")
    out = tmp_path / "out"
    proc = cli("plot", "--grid", str(grid), "--x", "n_labeled", "--out", str(out))
    assert proc.returncode == 2 and "no finished runs to plot" in proc.stderr
    assert cli("run", "--grid", str(grid), "--out", str(out), "--no-progress").returncode == 0
    proc = cli("plot", "--grid", str(grid), "--x", "n_labeled", "--series", "seed", "--metric", "test_error_min",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    png = out / "fig" / "figures" / "test_error_min_vs_n_labeled.png"
    assert proc.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    proc = cli("plot", "--grid", str(grid), "--x", "methods.lba.nope", "--out", str(out))
    assert proc.returncode == 2 and "'methods.lba.nope' is not a setting of every run" in proc.stderr


# ------------------------------------------------------------------ t-SNE (dissertation ch. 4)
DA_GRID = """
name = "da"
[base]
task = "domain_adaptation"
dataset = "digits"
target = "digits_inverted"
backbone = "lba_convnet"
method = "assoc_da"
n_labeled = 100
n_unlabeled = "all"
steps = 6
eval_every = 6
labeled_per_class = 3
unlabeled_batch = 30
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
"""


def trained_view(tmp_path, text):
    reg = registry()
    prepared = prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path / "data")
    run = find_run(prepared, prepared.runs[0].run_id[:6])
    return view_for_run(prepared, reg, run, out=tmp_path / "out", device=torch.device("cpu"), train=True,
                        log=lambda msg: None)


def test_tsne_points_of_a_domain_adaptation_run(tmp_path):
    view = trained_view(tmp_path, DA_GRID)
    sets = view.test_sets()
    assert [(s.role, s.dataset, len(s.x)) for s in sets] == [("source", "digits", 500),
                                                              ("target", "digits_inverted", 500)]
    result = tsne_points(view, n=50, perplexity=10)
    assert result.points.shape == (100, 2) and np.isfinite(result.points).all()
    assert result.domains == ["source (digits)", "target (digits_inverted)"]
    assert result.count(0) == result.count(1) == 50 and list(result.domain[:50]) == [0] * 50
    assert result.labels.dtype == np.int64 and set(result.labels) <= set(range(10)) and len(set(result.labels)) > 5
    # the labels are those of the chosen test images: the same seeded draw, source then target
    g = torch.Generator().manual_seed(view.seed)
    picks = [torch.randperm(500, generator=g)[:50] for _ in sets]
    assert np.array_equal(result.labels, torch.cat([s.y[p] for s, p in zip(sets, picks)]).numpy())
    # deterministic: the same run gives the same map; another seed draws other images
    again = tsne_points(view, n=50, perplexity=10)
    assert np.array_equal(result.points, again.points) and np.array_equal(result.labels, again.labels)
    other = tsne_points(dataclasses.replace(view, seed=view.seed + 1), n=50, perplexity=10)
    assert not np.array_equal(result.labels, other.labels)
    # a domain with fewer test images than n gives all of them; perplexity must be < the points
    with pytest.raises(UserError, match=r"perplexity 35 must be positive and less than the number of points "
                                        r"\(10: 5 \+ 5 test embeddings\)"):
        tsne_points(view, n=5)
    with pytest.raises(UserError, match="at least 1"):
        tsne_points(view, n=0)


def test_tsne_of_a_run_of_another_task_maps_its_one_test_set(tmp_path):
    view = trained_view(tmp_path, GRID)
    result = tsne_points(view, n=30, perplexity=5)
    assert result.domains == ["source (digits)"] and result.points.shape == (30, 2) and result.count(0) == 30


def test_tsne_figure_from_the_command_line(tmp_path):
    grid = write_grid(tmp_path, DA_GRID)
    out = tmp_path / "out"
    rid = run_id(grid)
    # a bad setting or an unknown run: one clear error before anything trains
    proc = cli("figure", "tsne", "--grid", str(grid), "--run", rid, "--out", str(out), "--train", "--arg", "nn=3")
    assert proc.returncode == 2 and "training run" not in proc.stderr
    assert "unknown key figures.tsne.nn (did you mean 'n'?); known keys: n, perplexity" in proc.stderr
    proc = cli("figure", "tsne", "--grid", str(grid), "--run", "zzz", "--out", str(out), "--train")
    assert proc.returncode == 2 and "no run of grid 'da' matches 'zzz'" in proc.stderr
    assert not out.exists()
    proc = cli("figure", "tsne", "--grid", str(grid), "--run", rid[:5], "--out", str(out), "--train",
               "--arg", "n=40", "--arg", "perplexity=8")
    assert proc.returncode == 0, proc.stderr
    assert "training run" in proc.stderr and "final test_error" in proc.stderr
    png = out / "da" / "figures" / f"{rid}_tsne.png"
    assert proc.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
