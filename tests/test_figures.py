"""`ssl-bench figure`: qualitative PNGs of a trained run (core neighbours, LbA association)."""
from __future__ import annotations

from conftest import cli, write_grid

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

    proc = cli("figure", "tsne", "--grid", str(grid), "--run", rid, "--out", str(out))
    assert proc.returncode == 2 and "no figure 'tsne' for method 'lba'; available: association, neighbours" in proc.stderr


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
    assert proc.returncode == 2 and "available: neighbours" in proc.stderr


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
