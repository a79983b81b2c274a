"""``ssl-bench bench``: the pieces it is made of (genuine-format stand-in data, rates by
difference, FLOPs counted against a hand count) and one end-to-end run on a tiny network."""
from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
import torch

from conftest import cli, write_grid
from ssl_bench import UserError
from ssl_bench_benchmarks.perf import bench
from ssl_bench.grid import expand, parse_grid
from ssl_bench.registry import registry as installed
from ssl_bench_plugins.datasets.digits import load_digits
from ssl_bench_plugins.datasets.svhn import load_svhn

TINY_SVHN = """
name = "tiny_svhn"
[base]
dataset = "svhn"
backbone = "lba_convnet"
method = "lba"
labeled_per_class = 2
unlabeled_batch = 20
augment = true
steps = 1000
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[axes]
n_labeled = [20]
n_unlabeled = [0, 100]
seed = [0, 1, 2]
"""


def test_stand_in_svhn_reads_through_both_loaders(tmp_path):
    import torchvision

    bench.synthetic_svhn(tmp_path / "svhn", 50, 20)
    ours = load_svhn(tmp_path)
    assert tuple(ours.train_x.shape) == (50, 3, 32, 32) and len(ours.test_y) == 20
    assert sorted(np.bincount(ours.train_y.numpy(), minlength=10)) == [5] * 10

    class Unchecked(torchvision.datasets.SVHN):
        def _check_integrity(self):
            return True

    theirs = Unchecked(str(tmp_path / "svhn"), split="train")
    image, label = theirs[7]
    assert label == ours.train_y[7].item()
    assert np.array_equal(np.asarray(image).transpose(2, 0, 1), ours.train_x[7].numpy())


def test_rate_by_difference_cancels_set_up_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def train(steps):  # 30 s of set-up, then 0.5 s a step
        clock[0] += 30 + 0.5 * steps

    assert bench.rate_by_difference(train, 3, 10, torch.device("cpu")) == pytest.approx(2.0)

    def noise(steps):  # no measurable work
        clock[0] += 1.0

    with pytest.raises(UserError, match="timing noise is larger than the work; use more --steps"):
        bench.rate_by_difference(noise, 3, 10, torch.device("cpu"))


def test_flops_of_a_training_step_match_a_hand_count():
    """Supervised, 20 labeled 1x8x8 digits, C(4)-C(4)-P-FC(8) + head FC(10), 2 FLOPs a MAC:
    conv1 fwd 2*20*4*64*9 = 92,160 and its weight gradient as much (no input gradient: the
    images need none); conv2 fwd 2*20*4*64*4*9 = 368,640, weight and input gradients as much;
    FC 64->8: 2*20*64*8 = 20,480 x 3; head 8->10: 2*20*8*10 = 3,200 x 3."""
    text = TINY_SVHN.replace('"svhn"', '"digits"').replace('"lba"', '"supervised"').replace("augment = true", "")
    config = expand(parse_grid(tomllib.loads(text)), installed())[0].config
    expected = 2 * 92_160 + 3 * 368_640 + 3 * 20_480 + 3 * 3_200
    assert bench.flops_per_run_step(config, installed(), load_digits(None), torch.device("cpu")) == expected


def test_bench_end_to_end_on_a_tiny_network(tmp_path):
    grid = write_grid(tmp_path, TINY_SVHN)
    out = tmp_path / "bench.json"
    proc = cli("bench", "--grid", str(grid), "--steps", "40", "--warmup", "2", "--pack", "3", "--workers", "0",
               "--images", "300", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["naive", "engine", "packed x3"]
    naive, engine, packed = report["variants"]
    assert packed["run_steps_per_s"] == pytest.approx(3 * packed["steps_per_s"])
    assert engine["ratio_to_first"] == pytest.approx(engine["run_steps_per_s"] / naive["run_steps_per_s"])
    # 6 runs of 1000 steps, projected at the packed rate
    assert report["grid_runs"] == 6 and report["grid_run_steps"] == 6000
    assert report["projected_grid_hours"] == pytest.approx(6000 / packed["run_steps_per_s"] / 3600)
    assert report["flops_per_run_step"] > 0 and report["data"] == "random SVHN-format images"
    assert "| packed x3 | 3 |" in proc.stdout and "projected wall time of tiny_svhn" in proc.stdout
