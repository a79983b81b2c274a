"""The runner end to end through the CLI: resuming after a crash, skipping finished runs,
determinism on a CPU, diverged and failed runs, the result columns and ``ssl-bench show``.

Every grid is tiny (digits, a 4-channel conv net, tens of steps) so the file runs in well
under a minute on two CPU cores.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssl_bench import read_curves

from conftest import TINY_GRID, cli, write_grid

#: backbone settings shared by the grids of this file (tiny, fast on a CPU)
TINY_NET = """
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
"""


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch):
    """Train in the CLI subprocesses on one thread: on a small, shared machine torch's default
    (a thread per core, spin-waiting) makes these tiny runs tens of times slower under load."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def runs_of(out: Path, grid: str) -> Path:
    return out / grid / "runs"


def curves_of(out: Path, grid: str) -> Path:
    return out / grid / "curves"


def run_files(out: Path, grid: str) -> list[Path]:
    folder = runs_of(out, grid)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dry_run_ids(grid: Path, *extra: str) -> list[str]:
    proc = cli("run", "--grid", str(grid), "--dry-run", *extra)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "\t" in line]
    return [line.split("\t")[0] for line in lines]


def assert_complete(rows: pd.DataFrame, out: Path, grid: str) -> None:
    """Every row is a whole, finished run with its curve on disk."""
    for col in ("run_id", "status", "test_error", "test_error_min", "labeled_hash", "unlabeled_hash",
                "started_at", "finished_at", "wall_s", "steps"):
        assert rows[col].notna().all(), f"column {col} has missing values:\n{rows[col]}"
    assert set(rows["status"]) == {"ok"}
    assert (rows["steps_done"] == rows["steps"]).all()
    for run_id in rows["run_id"]:
        assert (curves_of(out, grid) / f"{run_id}.parquet").is_file(), f"row {run_id} lacks its curve"


# ---------------------------------------------------------------------------------- resume
CRASH_GRID = TINY_GRID.replace("steps = 12", "steps = 150").replace("eval_every = 4", "eval_every = 50") \
    .replace("seed = [0, 1]", "seed = [0, 1, 2]")


def test_resume_after_sigkill(tmp_path):
    grid = write_grid(tmp_path, CRASH_GRID, "crash.toml")
    out = tmp_path / "out"
    ids = dry_run_ids(grid)
    assert len(ids) == 12 and len(set(ids)) == 12

    cmd = [sys.executable, "-m", "ssl_bench.cli", "run", "--grid", str(grid), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while len(run_files(out, "tiny")) < 2:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no two runs finished within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    before = run_files(out, "tiny")
    assert 2 <= len(before) < len(ids), "the kill must land in the middle of the grid"
    finished_before = {}
    digests_before = {}
    for path in before:
        row = pd.read_parquet(path)
        assert len(row) == 1 and row["run_id"].iloc[0] == path.stem
        finished_before[path.stem] = row["finished_at"].iloc[0]
        digests_before[path.stem] = file_digest(path)

    # A temporary file of a process killed while writing: never renamed into place. Its name
    # carries the writer's pid, which must be a dead process's (a live writer's file is kept).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_run = runs_of(out, "tiny") / f".0123456789ab.parquet.{dead.pid}.tmp"
    stale_run.write_bytes(b"PAR1 half a parquet file")
    stale_curve = curves_of(out, "tiny") / f".0123456789ab.parquet.{dead.pid}.tmp"
    stale_curve.parent.mkdir(parents=True, exist_ok=True)
    stale_curve.write_bytes(b"garbage")

    # Readers see whole rows only, and ignore hidden/partial files.
    rows = pd.read_parquet(runs_of(out, "tiny"))
    assert sorted(rows["run_id"]) == sorted(finished_before)
    assert_complete(rows, out, "tiny")

    # Resume: the same command finishes the grid.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(before)} of {len(ids)} runs already finished" in again.stderr
    assert f"{len(ids) - len(before)} ok, 0 diverged, 0 failed, {len(before)} already done" in again.stderr
    trained = [line.split()[1] for line in again.stderr.splitlines() if line.startswith("[")]
    assert sorted(trained) == sorted(set(ids) - set(finished_before)), "finished runs were retrained"

    assert not stale_run.exists() and not stale_curve.exists(), "stale temporaries were not removed"
    assert not [p for p in runs_of(out, "tiny").iterdir() if p.name.startswith(".")]

    final = pd.read_parquet(runs_of(out, "tiny"))
    assert len(final) == len(ids)
    assert final["run_id"].is_unique
    assert set(final["run_id"]) == set(ids)
    assert_complete(final, out, "tiny")
    for run_id, finished_at in finished_before.items():
        assert final.set_index("run_id").loc[run_id, "finished_at"] == finished_at
        assert file_digest(runs_of(out, "tiny") / f"{run_id}.parquet") == digests_before[run_id]


# ------------------------------------------------------------------ a finished grid, shared
FINISHED_GRID = f"""
name = "finished"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
steps = 12
eval_every = 4
last_k = 2
labeled_per_class = 2
unlabeled_batch = 20
lr = 0.002
{TINY_NET}
[base.methods.lba]
visit_weight = 0.5
[axes]
n_labeled = [20, "all"]
n_unlabeled = [0, 100]
[[table]]
name = "t"
rows = "n_labeled"
columns = "n_unlabeled"
metric = "test_error"
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A grid run to completion once for the tests below: (grid file, out dir, first CLI result)."""
    root = tmp_path_factory.mktemp("finished")
    grid = write_grid(root, FINISHED_GRID, "finished.toml")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return grid, out, proc


def test_rerun_of_finished_grid_trains_nothing(finished):
    grid, out, first = finished
    assert "4 ok, 0 diverged, 0 failed, 0 already done" in first.stderr
    files = {p: (file_digest(p), p.stat().st_mtime_ns) for p in (out / "finished").rglob("*") if p.is_file()}
    assert len(files) == 8  # 4 rows + 4 curves

    again = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "4 of 4 runs already finished" in again.stderr
    assert "0 ok, 0 diverged, 0 failed, 4 already done" in again.stderr
    assert not [line for line in again.stderr.splitlines() if line.startswith("[")], "a run was trained"
    assert "| " in again.stdout, "the tables are still printed"
    after = {p: (file_digest(p), p.stat().st_mtime_ns) for p in (out / "finished").rglob("*") if p.is_file()}
    assert after == files


def test_runs_another_grid_finished_are_copied_in_not_trained_again(finished, tmp_path):
    import shutil

    _, first_out, _ = finished
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    # the same four runs (same settings: same run ids) and two new ones, under another grid's name
    text = FINISHED_GRID.replace('name = "finished"', 'name = "sibling"').replace('n_labeled = [20, "all"]',
                                                                                  'n_labeled = [20, 30, "all"]')
    sibling = write_grid(tmp_path, text, "sibling.toml")
    proc = cli("run", "--grid", str(sibling), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "sibling: 4 runs finished in other grids' folders under" in proc.stderr and "from finished" in proc.stderr
    assert "2 ok, 0 diverged, 0 failed, 4 already done (4 copied from other grids)" in proc.stderr
    trained = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert len(trained) == 2 and all("n_labeled=30" in line for line in trained)
    rows = pd.read_parquet(runs_of(out, "sibling")).set_index("run_id")
    originals = pd.read_parquet(runs_of(out, "finished")).set_index("run_id")
    assert len(rows) == 6 and set(rows["grid"]) == {"sibling"} and set(originals["grid"]) == {"finished"}
    copied = rows.loc[originals.index, originals.columns].drop(columns="grid")
    pd.testing.assert_frame_equal(copied, originals.drop(columns="grid"))
    assert len(list(curves_of(out, "sibling").glob("*.parquet"))) == 6
    # --no-reuse: every run trains in this grid's own folder
    again = tmp_path / "again"
    shutil.copytree(first_out, again)
    proc = cli("run", "--grid", str(sibling), "--out", str(again), "--no-progress", "--no-reuse")
    assert proc.returncode == 0, proc.stderr
    assert "6 ok, 0 diverged, 0 failed, 0 already done;" in proc.stderr and "copied" not in proc.stderr


def test_only_finished_runs_of_other_grids_are_adopted_with_their_files(tmp_path):
    from ssl_bench import results

    out = tmp_path / "out"

    def row(grid, run_id, status):
        table = pa.table({"run_id": [run_id], "grid": [grid], "status": [status], "test_error": [1.5]})
        results.write_atomic(table, runs_of(out, grid) / f"{run_id}.parquet")
        results.write_atomic(pa.table({"run_id": [run_id], "step": [3]}), curves_of(out, grid) / f"{run_id}.parquet")

    row("a", "ok1", "ok")
    row("a", "div1", "diverged")
    row("b", "fail1", "failed")  # an error there may be that machine's: trained here
    (out / "a" / "models").mkdir()
    (out / "a" / "models" / "ok1.pt").write_bytes(b"weights")
    (runs_of(out, "b") / "bad1.parquet").write_bytes(b"not parquet")
    row("b", "badcurve1", "ok")
    (curves_of(out, "b") / "badcurve1.parquet").write_bytes(b"not parquet either")
    adopted = results.adopt_finished(out, "c", ["ok1", "div1", "fail1", "bad1", "badcurve1", "new1"])
    assert adopted == {"ok1": "a", "div1": "a"}
    assert sorted(p.stem for p in runs_of(out, "c").glob("*.parquet")) == ["div1", "ok1"]
    copied = pq.read_table(runs_of(out, "c") / "ok1.parquet").to_pylist()
    assert copied == [{"run_id": "ok1", "grid": "c", "status": "ok", "test_error": 1.5}]
    assert pq.read_table(curves_of(out, "c") / "ok1.parquet").to_pylist() == [{"run_id": "ok1", "step": 3}]
    assert (out / "c" / "models" / "ok1.pt").read_bytes() == b"weights"
    assert not list(out.rglob(".*.tmp"))  # every copy went through a temporary, none is left


def test_result_columns_and_dtypes(finished):
    _, out, _ = finished
    schema = pq.read_table(runs_of(out, "finished")).schema
    expected = {
        "run_id": pa.string(), "grid": pa.string(), "method": pa.string(), "backbone": pa.string(),
        "dataset": pa.string(), "n_labeled": pa.int64(), "n_unlabeled": pa.int64(), "seed": pa.int64(),
        "status": pa.string(), "test_error": pa.float64(), "test_error_min": pa.float64(),
        "test_error_last_k": pa.float64(), "steps": pa.int64(), "wall_s": pa.float64(),
        "labeled_hash": pa.string(), "unlabeled_hash": pa.string(), "ssl_bench_version": pa.string(),
        "torch_version": pa.string(), "device": pa.string(),
        "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
        # one column per plugin parameter
        "methods.lba.visit_weight": pa.float64(), "methods.lba.walker_weight": pa.float64(),
        "backbones.lba_convnet.widths": pa.string(), "backbones.lba_convnet.embedding_dim": pa.int64(),
        # protocol settings
        "lr": pa.float64(), "eval_every": pa.int64(), "last_k": pa.int64(), "labeled_per_class": pa.int64(),
        "unlabeled_batch": pa.int64(), "optimizer": pa.string(), "unlabeled_overlap": pa.bool_(),
        "n_validation": pa.int64(), "weight_decay": pa.float64(),
    }
    for name, typ in expected.items():
        assert name in schema.names, f"missing column {name}"
        field_type = schema.field(name).type
        if typ == pa.string():
            assert field_type in (pa.string(), pa.large_string()), f"{name}: {field_type}"
        else:
            assert field_type == typ, f"{name}: {field_type}, expected {typ}"

    rows = pd.read_parquet(runs_of(out, "finished")).set_index(["n_labeled", "n_unlabeled"]).sort_index()
    # "all" is stored as the resolved count: every one of the 1297 training images of digits
    assert sorted(rows.index) == [(20, 0), (20, 100), (1297, 0), (1297, 100)]
    assert (rows["grid"] == "finished").all() and (rows["method"] == "lba").all()
    assert (rows["backbone"] == "lba_convnet").all() and (rows["dataset"] == "digits").all()
    assert (rows["seed"] == 0).all() and (rows["steps"] == 12).all()
    assert (rows["methods.lba.visit_weight"] == 0.5).all()
    assert (rows["methods.lba.walker_weight"] == 1.0).all()  # defaults are recorded too
    assert (rows["backbones.lba_convnet.widths"] == "4").all()
    assert (rows["lr"] == 0.002).all()
    assert (rows["device"] == "cpu").all()
    assert (rows["finished_at"] >= rows["started_at"]).all()
    assert ((rows["test_error"] >= 0) & (rows["test_error"] <= 100)).all()
    assert (rows["test_error_min"] <= rows["test_error"]).all()
    # labeled sets of the same seed are the same whatever the unlabeled count (paired runs)
    assert rows.loc[(20, 0), "labeled_hash"] == rows.loc[(20, 100), "labeled_hash"]
    assert rows.loc[(20, 0), "labeled_hash"] != rows.loc[(1297, 0), "labeled_hash"]

    curves = pd.read_parquet(curves_of(out, "finished"))
    assert {"run_id", "step", "test_error"} <= set(curves.columns)
    assert len(curves) == 4 * 3  # evaluations at steps 4, 8, 12 of each run
    by_run = rows.reset_index().set_index("run_id")
    for run_id, curve in curves.groupby("run_id"):
        curve = curve.sort_values("step")
        assert list(curve["step"]) == [4, 8, 12]
        assert curve["test_error"].iloc[-1] == by_run.loc[run_id, "test_error"]
        assert curve["test_error"].min() == by_run.loc[run_id, "test_error_min"]
        assert curve["test_error"].iloc[-2:].median() == by_run.loc[run_id, "test_error_last_k"]
    assert set(curves["run_id"]) == set(by_run.index)


def test_show_prints_row_and_curve(finished):
    _, out, _ = finished
    row = pd.read_parquet(runs_of(out, "finished")).iloc[0]
    run_id = row["run_id"]
    proc = cli("show", run_id[:6], "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["run_id", run_id] for line in lines), proc.stdout
    assert any(line.split()[:2] == ["status", "ok"] for line in lines), proc.stdout
    shown = [line.split() for line in lines if line.split()[:1] == ["test_error"]]
    assert shown and float(shown[0][1]) == pytest.approx(row["test_error"])
    assert any(line.startswith("config") and '"method": "lba"' in line for line in lines)
    assert "curve:" in lines
    curve = lines[lines.index("curve:") + 1:]
    assert "step" in curve[0].split() and "test_error" in curve[0].split()
    assert [int(line.split()[curve[0].split().index("step")]) for line in curve[1:]] == [4, 8, 12]

    missing = cli("show", "zzzz", "--out", str(out))
    assert missing.returncode == 2 and "no run 'zzzz'" in missing.stderr
    assert "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------- determinism
def test_same_run_twice_on_cpu_is_identical(tmp_path):
    grid = write_grid(tmp_path, """
        name = "det"
        [base]
        dataset = "digits"
        backbone = "lba_convnet"
        method = "lba"
        steps = 20
        eval_every = 5
        labeled_per_class = 2
        unlabeled_batch = 20
        n_labeled = 20
        n_unlabeled = 100
        unlabeled_overlap = false
        [base.backbones.lba_convnet]
        widths = "4"
        embedding_dim = 8
        [axes]
        seed = [3, 4]
        """)
    frames = []
    for name in ("a", "b"):
        proc = cli("run", "--grid", str(grid), "--out", str(tmp_path / name), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        rows = pd.read_parquet(runs_of(tmp_path / name, "det")).sort_values("run_id").reset_index(drop=True)
        curves = read_curves(tmp_path / name, "det").sort_values(["run_id", "step"])
        frames.append((rows, curves.reset_index(drop=True)))
    (rows_a, curves_a), (rows_b, curves_b) = frames
    assert len(rows_a) == 2
    for col in ("run_id", "seed", "test_error", "test_error_min", "test_error_last_k", "labeled_hash",
                "unlabeled_hash"):
        assert list(rows_a[col]) == list(rows_b[col]), col
    assert (rows_a["started_at"] != rows_b["started_at"]).all(), "the two invocations really ran twice"
    # the two seeds are different runs with different data
    assert rows_a["labeled_hash"].nunique() == 2 and rows_a["unlabeled_hash"].nunique() == 2
    loss_columns = [c for c in curves_a.columns if c.startswith("loss")]
    assert {"loss", "loss_classification", "loss_walker", "loss_visit"} <= set(loss_columns)
    assert len(curves_a) == 2 * 4
    pd.testing.assert_frame_equal(curves_a, curves_b, check_exact=True)
    loss_0, loss_1 = (curves_a.loc[curves_a["run_id"] == run_id, "loss"].to_numpy() for run_id in rows_a["run_id"])
    assert not np.array_equal(loss_0, loss_1), "different seeds must train differently"


# ---------------------------------------------------------------------- diverged and failed
NAN_METHOD = """
    import torch.nn.functional as F
    from ssl_bench import Method, hookimpl, hyperparameter


    class NanFromStep3(Method):
        \"\"\"Cross-entropy that becomes NaN at step 3.\"\"\"

        name = "nan_from_3"
        uses_unlabeled = False
        scale: float = hyperparameter(1.0, ge=0)

        def loss_terms(self, batch, model, ctx):
            loss = self.scale * F.cross_entropy(model(batch.x_labeled), batch.y_labeled)
            if ctx.step >= 3:
                loss = loss * float("nan")
            return {"classification": loss}


    @hookimpl
    def ssl_bench_methods():
        return [NanFromStep3]
    """

FAILING_METHOD = """
    import os

    import torch.nn.functional as F
    from ssl_bench import Method, hookimpl


    class BoomAtStep2(Method):
        \"\"\"Raises at step 2 while $SSL_BENCH_TEST_BOOM is set.\"\"\"

        name = "boom_at_2"
        uses_unlabeled = False

        def loss_terms(self, batch, model, ctx):
            if ctx.step >= 2 and os.environ.get("SSL_BENCH_TEST_BOOM"):
                raise RuntimeError(f"boom at step {ctx.step}")
            return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}


    @hookimpl
    def ssl_bench_methods():
        return [BoomAtStep2]
    """

SMALL_BASE = f"""
[base]
dataset = "digits"
backbone = "lba_convnet"
steps = 10
eval_every = 5
labeled_per_class = 2
unlabeled_batch = 20
n_labeled = 20
n_unlabeled = 100
{TINY_NET}
"""


def indent(text: str) -> str:
    """``text`` indented to sit inside the dedented grid literals below."""
    return textwrap.indent(text.strip(), " " * 8).lstrip()


def test_nan_loss_is_recorded_as_diverged_and_the_grid_goes_on(tmp_path, plugin_path):
    plugin_path("ssl-bench-test-nan", {"nan": "runner_test_nan_plugin"}, {"runner_test_nan_plugin": NAN_METHOD})
    grid = write_grid(tmp_path, f"""
        name = "nan"
        {indent(SMALL_BASE)}
        [axes]
        method = ["nan_from_3", "supervised"]
        seed = [0, 1]
        """)
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr  # diverging is a result, not an error of the suite
    assert "2 ok, 2 diverged, 0 failed" in proc.stderr
    rows = pd.read_parquet(runs_of(out, "nan"))
    assert len(rows) == 4 and rows["run_id"].is_unique
    diverged = rows[rows["method"] == "nan_from_3"]
    assert list(diverged["status"]) == ["diverged", "diverged"]
    for error in diverged["error"]:
        assert "step 3" in error and "nan" in error.lower(), error
    assert (diverged["steps_done"] == 3).all()
    assert diverged["test_error"].isna().all(), "a diverged model's final error is not a result"
    assert (diverged["methods.nan_from_3.scale"] == 1.0).all()
    ok = rows[rows["method"] == "supervised"]
    assert list(ok["status"]) == ["ok", "ok"]
    assert ok["test_error"].notna().all() and ok["error"].isna().all()
    # the diverged runs came first in the grid; the ones after them still ran
    assert diverged["finished_at"].max() <= ok["started_at"].min()

    # a diverged run is finished: a rerun does not repeat it
    again = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "4 of 4 runs already finished" in again.stderr


def test_failed_run_is_recorded_and_retried_alone(tmp_path, plugin_path, monkeypatch):
    plugin_path("ssl-bench-test-boom", {"boom": "runner_test_boom_plugin"},
                {"runner_test_boom_plugin": FAILING_METHOD})
    grid = write_grid(tmp_path, f"""
        name = "boom"
        {indent(SMALL_BASE)}
        [axes]
        method = ["boom_at_2", "supervised"]
        seed = [0, 1]
        [[exclude]]
        method = "boom_at_2"
        seed = 1
        """)
    out = tmp_path / "out"
    monkeypatch.setenv("SSL_BENCH_TEST_BOOM", "1")
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "2 ok, 0 diverged, 1 failed" in proc.stderr
    assert "RuntimeError: boom at step 2" in proc.stderr
    rows = pd.read_parquet(runs_of(out, "boom")).set_index("run_id")
    assert len(rows) == 3
    failed = rows[rows["status"] == "failed"]
    assert len(failed) == 1 and failed["method"].iloc[0] == "boom_at_2"
    assert failed["error"].iloc[0] == "RuntimeError: boom at step 2"
    assert failed["steps_done"].iloc[0] == 2
    failed_id = failed.index[0]
    assert set(rows.loc[rows.index != failed_id, "status"]) == {"ok"}
    assert rows.loc[failed_id, "finished_at"] <= rows.loc[rows.index != failed_id, "started_at"].min()

    # the row keeps the last line; the traceback is one command away
    shown = cli("show", failed_id, "--out", str(out), "--traceback")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Traceback (most recent call last)") and "runner_test_boom_plugin" in shown.stdout
    assert shown.stdout.rstrip().endswith("RuntimeError: boom at step 2")
    ok_id = rows.index[rows["status"] == "ok"][0]
    no_trace = cli("show", ok_id, "--out", str(out), "--traceback")
    assert no_trace.returncode == 2 and "has no traceback: only failed runs have one" in no_trace.stderr
    # --debug: the failing run stops the command with its traceback, and no row is written for it
    debug = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress", "--retry-failed", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RuntimeError: boom at step 2" in debug.stderr
    assert pd.read_parquet(runs_of(out, "boom")).set_index("run_id").loc[failed_id, "status"] == "failed"

    # without --retry-failed a failed run counts as finished
    again = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert "3 of 3 runs already finished" in again.stderr
    assert pd.read_parquet(runs_of(out, "boom")).set_index("run_id").loc[failed_id, "status"] == "failed"

    # the cause is fixed; --retry-failed reruns that run only, and replaces its row
    monkeypatch.delenv("SSL_BENCH_TEST_BOOM")
    digests = {p.stem: file_digest(p) for p in run_files(out, "boom") if p.stem != failed_id}
    retry = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress", "--retry-failed")
    assert retry.returncode == 0, retry.stderr
    assert "2 of 3 runs already finished" in retry.stderr
    assert "1 ok, 0 diverged, 0 failed, 2 already done" in retry.stderr
    trained = [line.split()[1] for line in retry.stderr.splitlines() if line.startswith("[")]
    assert trained == [failed_id]
    final = pd.read_parquet(runs_of(out, "boom"))
    assert len(final) == 3 and final["run_id"].is_unique
    final = final.set_index("run_id")
    assert final.loc[failed_id, "status"] == "ok"
    assert pd.isna(final.loc[failed_id, "error"])
    assert not (out / "boom" / "tracebacks" / f"{failed_id}.txt").exists()
    assert final.loc[failed_id, "finished_at"] > rows.loc[failed_id, "finished_at"]
    for run_id, digest in digests.items():
        assert final.loc[run_id, "finished_at"] == rows.loc[run_id, "finished_at"]
        assert file_digest(runs_of(out, "boom") / f"{run_id}.parquet") == digest


def test_curves_of_a_mixed_grid_read_as_one_table(tmp_path, plugin_path):
    plugin_path("ssl-bench-test-nan2", {"nan": "runner_test_nan_plugin2"}, {"runner_test_nan_plugin2": NAN_METHOD})
    grid = write_grid(tmp_path, f"""
        name = "mixed"
        {indent(SMALL_BASE)}
        [axes]
        method = ["nan_from_3", "supervised", "lba"]
        """)
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    # Every curve file of a grid must share one schema, whichever file a reader looks at first.
    schemas = {p.stem: pq.read_schema(p).remove_metadata() for p in curves_of(out, "mixed").glob("*.parquet")}
    assert len(schemas) == 3
    first = next(iter(schemas.values()))
    for run_id, schema in schemas.items():
        assert schema.equals(first), f"curve schema of {run_id} differs:\n{schema}\nvs\n{first}"
    curves = pd.read_parquet(curves_of(out, "mixed"))
    assert {"step", "test_error", "loss", "loss_terms"} <= set(curves.columns)
    wide = read_curves(out, "mixed")
    assert {"step", "test_error", "loss", "loss_walker", "loss_visit", "loss_classification"} <= set(wide.columns)
    assert len(wide) == len(curves)
    assert len(curves) == 2 * 2  # the diverged run has no evaluation; the others two each


def test_temporary_of_a_live_writer_is_kept(tmp_path):
    """Two runners on one grid: the second must not delete the first's file in flight."""
    from ssl_bench import results

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        runs = results.runs_dir(tmp_path, "g")
        runs.mkdir(parents=True)
        mine = runs / f".abc.parquet.{live.pid}.tmp"
        mine.write_bytes(b"in flight")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = runs / f".def.parquet.{dead.pid}.tmp"
        stale.write_bytes(b"stale")
        assert results.clean_stale_temporaries(tmp_path, "g") == 1
        assert mine.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------- damaged files
def test_damaged_result_files_are_moved_aside_and_retrained(tmp_path):
    """Fault injection: a truncated row, a zero-byte row and a truncated curve (whose intact row
    must go with it) in a finished grid. `table` warns, names each file and counts the runs
    missing; `run` retrains exactly those three; nothing is deleted."""
    grid = write_grid(tmp_path, FINISHED_GRID, "finished.toml")
    out = tmp_path / "out"
    assert cli("run", "--grid", str(grid), "--out", str(out), "--no-progress").returncode == 0
    rows = run_files(out, "finished")
    assert len(rows) == 4
    truncated, empty, with_bad_curve = rows[0], rows[1], rows[2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    empty.write_bytes(b"")
    curve = curves_of(out, "finished") / with_bad_curve.name
    curve.write_bytes(curve.read_bytes()[: len(curve.read_bytes()) // 2])

    table = cli("table", "--grid", str(grid), "--out", str(out))
    assert table.returncode == 0, table.stderr
    warnings = [line for line in table.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4 and all("moved to" in w and ".damaged" in w for w in warnings)
    assert any(str(truncated) in w for w in warnings) and any(str(empty) in w for w in warnings)
    assert any(str(with_bad_curve) in w and "its curve file is damaged" in w for w in warnings)
    assert "Missing: 3 run(s) without a result" in table.stdout
    damaged = sorted(p.name for p in out.rglob(".damaged/*.parquet"))
    assert damaged == sorted([truncated.name, empty.name, with_bad_curve.name, curve.name])

    again = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "3 ok, 0 diverged, 0 failed, 1 already done" in again.stderr
    rows = pd.read_parquet(runs_of(out, "finished"))
    assert len(rows) == 4 and rows["run_id"].is_unique
    assert_complete(rows, out, "finished")
    assert len(list(out.rglob(".damaged/*.parquet"))) == 4  # the damaged copies are kept


def test_table_says_when_the_grid_has_no_results_for_its_current_runs(finished, tmp_path):
    grid, out, _ = finished
    # another configuration of the grid (--set): the 4 rows on disk are not its runs
    other = cli("table", "--grid", str(grid), "--out", str(out), "--set", "seed=7")
    assert other.returncode == 0, other.stderr
    assert ("note: 0 of the 4 runs of grid 'finished' have results" in other.stderr
            and "4 other row(s) there belong to other configurations" in other.stderr
            and f"`ssl-bench run --grid finished --out {out}` (with the same --set options) trains them" in other.stderr)
    # nothing run yet at all
    empty = cli("table", "--grid", str(grid), "--out", str(tmp_path / "empty"))
    assert "note: 0 of the 4 runs of grid 'finished' have results" in empty.stderr and "other row" not in empty.stderr
    # complete: no note; read_runs can keep to the current runs
    complete = cli("table", "--grid", str(grid), "--out", str(out))
    assert "note:" not in complete.stderr
    from ssl_bench.results import read_runs
    some = sorted(p.stem for p in run_files(out, "finished"))[:2]
    assert sorted(read_runs(out, "finished", run_ids=some)["run_id"]) == some
