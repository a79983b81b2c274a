"""benchmarks/cclp_toys.py (CCLP paper §4 toy experiments) on a tiny setting: the figures are
written, and L_sup + L_CCLP (S = 10) gathers each class of the two circles into a compact
cluster while L_sup + CER does not."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import load_script

@pytest.fixture(scope="module")
def toys():
    return load_script("benchmarks/cclp_toys.py", "cclp_toys_under_test")


def test_tiny_circles_figures_and_compactness(toys, tmp_path):
    results = toys.run(tmp_path, seed=0, names=["circles_S10", "circles_cer"], n_points=40, iterations=150,
                       snapshots=(0, 150))
    for name in ("circles_S10", "circles_cer"):
        png = tmp_path / f"{name}.png"
        assert results[name]["png"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    start, end = results["circles_S10"]["start"], results["circles_S10"]["end"]
    # concentric circles: both class centroids at the origin, spread/gap >> 1 at the start
    assert start["spread_over_gap"] > 10
    # CCLP: each class gathered (spread halved) and the two classes apart (spread/gap < 1)
    assert end["spread"] < 0.5 * start["spread"]
    assert end["spread_over_gap"] < 1.0
    # CER (the paper's failure case) does not separate the circles
    assert results["circles_cer"]["end"]["spread_over_gap"] > 10 * end["spread_over_gap"]


def test_training_is_deterministic(toys):
    setting = toys.dataclasses.replace(toys.SETTINGS["moons_S10"], n_points=20, iterations=5, snapshots=(0, 5))
    a, b = toys.train(setting, seed=3), toys.train(setting, seed=3)
    assert [s.iteration for s in a.snapshots] == [0, 5]
    for sa, sb in zip(a.snapshots, b.snapshots):
        np.testing.assert_array_equal(sa.z, sb.z)
        np.testing.assert_array_equal(sa.grad_reg, sb.grad_reg)
    assert a.end == b.end
    assert not np.array_equal(a.snapshots[0].z, a.snapshots[1].z)  # the embeddings are trained


def test_compactness_measure(toys):
    y = np.array([0, 0, 1, 1])
    z = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    m = toys.compactness(z, y)
    assert m["gap"] == pytest.approx(10.0)
    assert m["spread"] == pytest.approx(1.0) and m["reach"] == pytest.approx(1.0)
    assert m["spread_over_gap"] == pytest.approx(0.1)
