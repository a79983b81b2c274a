"""benchmarks/perf/cclp_cost.py (the CCLP paper's §6 cost claim): the measuring function runs
at a tiny batch and returns the expected fields. No timing assertions."""
from __future__ import annotations


import pytest

from conftest import load_script

@pytest.fixture(scope="module")
def cost():
    return load_script("benchmarks/perf/cclp_cost.py", "cclp_cost_under_test")


def test_measure_tiny_batch(cost):
    r = cost.measure(40, "cpu", n_labeled=20, repeats=1, steps=1, warmup=1)
    assert (r.n, r.n_labeled, r.device, r.repeats, r.steps) == (40, 20, "cpu", 1, 1)
    assert len(r.samples_without) == len(r.samples_with) == len(r.round_ratios) == 1
    assert r.ms_without > 0 and r.ms_with > 0 and r.ms_cclp_alone > 0
    assert r.ratio == pytest.approx(r.ms_with / r.ms_without)
    assert r.threads >= 1
    assert r.cpu_ms_without > 0 and r.cpu_ms_with > 0 and r.cpu_ratio == pytest.approx(r.cpu_ms_with / r.cpu_ms_without)
    row = cost.table([r]).splitlines()[-1]
    assert row.startswith("| 40 (20 + 20) | cpu |")


def test_rejects_bad_batch(cost):
    with pytest.raises(ValueError):
        cost.measure(40, "cpu", n_labeled=40)
    with pytest.raises(ValueError):
        cost.measure(40, "cpu", n_labeled=15)
