"""The committed result sets stay valid: every run id on disk is still a run of its grid, as
expanded by today's code with the command that made it (results/README.md). A change to the
core that renamed or re-hashed keys would orphan them: this test fails first."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ssl_bench.grid import expand, load_grid
from ssl_bench.registry import registry

ROOT = Path(__file__).resolve().parents[1]
#: grid -> the --set options of the command that made it (results/README.md)
COMMITTED = {
    "digits_table3": {},
    "cclp_steps_digits": {},
    "fashion_mnist_table3": {"steps": 200, "eval_every": 200, "seed": 0},
    "baselines_digits": {},
    "da_fashion_mnist_m": {},
    "adc_digits": {},
    "adc_fashion_mnist": {},
    "snowball_lmcs_digits": {},
    "retrieval_fashion_mnist": {},
    "retrieval_digits": {},
}


@pytest.mark.parametrize("grid", sorted(COMMITTED))
def test_committed_run_ids_are_runs_of_their_grid(grid):
    reg = registry()
    runs = expand(load_grid(reg.grid(grid).path, COMMITTED[grid]), reg)
    rows = pd.read_parquet(ROOT / "results" / grid / "runs")
    assert sorted(rows["run_id"]) == sorted(r.run_id for r in runs)
    # and the stored configuration resolves to the same run id
    by_id = {r.run_id: r for r in runs}
    for run_id, stored in zip(rows["run_id"], rows["config"]):
        assert by_id[run_id].config["method"] == json.loads(stored)["method"]
