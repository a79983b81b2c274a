"""Executors: a grid trained by worker processes or by Ray writes the same rows, row for row,
as the in-process executor; an interrupted Ray grid resumes; execution flags are validated
before any work and recorded in every row."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import TINY_GRID, cli, write_grid

#: the columns a run's result is made of (not where or when it ran)
RESULT_COLUMNS = ["status", "n_labeled", "n_unlabeled", "seed", "steps_done", "test_error", "test_error_min",
                  "test_error_last_k", "labeled_hash", "unlabeled_hash", "config", "engine", "pack_size"]


def rows(out, grid):
    return pd.read_parquet(out / grid / "runs").set_index("run_id").sort_index()


def curves(out, grid):
    frame = pd.read_parquet(out / grid / "curves").sort_values(["run_id", "step"]).reset_index(drop=True)
    return frame.drop(columns=["loss_terms"])


def assert_same_results(a, b, grid):
    ra, rb = rows(a, grid), rows(b, grid)
    assert list(ra.index) == list(rb.index)
    pd.testing.assert_frame_equal(ra[RESULT_COLUMNS], rb[RESULT_COLUMNS])
    pd.testing.assert_frame_equal(curves(a, grid), curves(b, grid))


def test_ray_executor_matches_the_local_executor_on_the_digits_grid(tmp_path):
    pytest.importorskip("ray")
    short = ["--set", "steps=20", "--set", "eval_every=10", "--no-progress"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    first = cli("run", "--grid", "digits_table3", "--out", str(local), *short)
    assert first.returncode == 0, first.stderr
    second = cli("run", "--grid", "digits_table3", "--out", str(on_ray), "--executor", "ray", *short)
    assert second.returncode == 0, second.stderr
    assert "60 ok, 0 diverged, 0 failed" in second.stderr
    assert_same_results(local, on_ray, "digits_table3")
    assert rows(on_ray, "digits_table3")["device"].str.startswith("cpu@").all()  # cpu@<ray node>

    # an interrupted grid: rows lost with their runs are trained again, and only those
    lost = sorted((on_ray / "digits_table3" / "runs").glob("*.parquet"))[:7]
    for path in lost:
        path.unlink()
    third = cli("run", "--grid", "digits_table3", "--out", str(on_ray), "--executor", "ray", *short)
    assert third.returncode == 0, third.stderr
    assert "7 ok, 0 diverged, 0 failed, 53 already done" in third.stderr
    assert_same_results(local, on_ray, "digits_table3")


def test_worker_processes_match_in_process_training(tmp_path):
    grid = write_grid(tmp_path, TINY_GRID)
    here, pool = tmp_path / "here", tmp_path / "pool"
    for out, extra in ((here, []), (pool, ["--devices", "cpu,cpu"])):
        proc = cli("run", "--grid", str(grid), "--out", str(out), "--pack", "2", "--no-progress", *extra)
        assert proc.returncode == 0, proc.stderr
        assert "8 ok, 0 diverged, 0 failed" in proc.stderr
    assert_same_results(here, pool, "tiny")
    assert (rows(pool, "tiny")["pack_size"] == 2).all()


def test_execution_options_are_recorded_in_every_row(tmp_path):
    grid = write_grid(tmp_path, TINY_GRID)
    proc = cli("run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--pack", "4", "--bf16", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out", "tiny")
    assert (table["engine"] == "bf16").all()
    # 8 runs: seeds x labeled counts share packs; unlabeled 0 and 100 cannot (different objective)
    assert sorted(table["pack_size"]) == [4] * 8
    assert "pack of 4" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--pack", "0"], "--pack '0': give a number of runs (1 = no packing) or auto"),
    (["--pack", "many"], "--pack 'many': give a number of runs"),
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["--address", "10.0.0.1:6379"], "--address is the Ray cluster's address: use it with --executor ray"),
    (["--executor", "ray", "--devices", "cpu,cpu"], "--devices is for --executor local"),
    (["--devices", "cpu,tpu"], "--device 'tpu'"),
])
def test_bad_execution_flags_fail_before_any_work(tmp_path, args, message):
    grid = write_grid(tmp_path, TINY_GRID)
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
