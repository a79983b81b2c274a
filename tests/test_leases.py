"""Several ``ssl-bench run`` processes on one results directory (ssl_bench/leases.py): each run
is claimed by one process, a dead or silent owner's claim is taken over, and two concurrent
processes train every run exactly once between them."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ssl_bench.leases import Leases
from conftest import TINY_GRID, write_grid


def other(leases: Leases, **owner) -> Leases:
    """The same lease directory seen by another owner (another process, or host)."""
    twin = Leases(leases.directory, leases.timeout)
    twin.owner = {**twin.owner, **owner}
    return twin


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_and_released_after_use(tmp_path):
    mine = Leases(tmp_path / ".leases", timeout=60)
    theirs = other(mine, pid=os.getppid())  # alive, this host
    assert mine.claim("r1") and not theirs.claim("r1")
    assert json.loads(mine.path("r1").read_text())["pid"] == os.getpid()
    assert theirs.claim("r2") and not mine.claim("r2")
    mine.release("r1")
    assert not mine.path("r1").exists() and theirs.claim("r1")
    mine.release("r2")  # not ours: left alone
    assert mine.path("r2").exists()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    logged = []
    mine = Leases(tmp_path / ".leases", timeout=3600, log=logged.append)
    gone = other(mine, pid=dead_pid())
    assert gone.claim("r1")
    assert mine.claim("r1")
    assert json.loads(mine.path("r1").read_text())["pid"] == os.getpid()
    assert logged and "is gone" in logged[0]


def test_a_silent_owner_on_another_host_expires_after_the_timeout(tmp_path):
    mine = Leases(tmp_path / ".leases", timeout=30)
    remote = other(mine, host="elsewhere", pid=1)
    assert remote.claim("r1")
    assert not mine.claim("r1")  # fresh heartbeat: still theirs
    old = time.time() - 31
    os.utime(mine.path("r1"), (old, old))
    assert mine.claim("r1")  # silent for 31 s > 30 s
    # a half-written lease (killed while creating it) is taken over once it is old, not before
    mine.path("r2").write_text("{")
    assert not mine.claim("r2")
    os.utime(mine.path("r2"), (old, old))
    assert mine.claim("r2")


def test_the_heartbeat_keeps_a_held_lease_fresh(tmp_path):
    mine = Leases(tmp_path / ".leases", timeout=0.5)
    assert mine.claim("r1")
    old = time.time() - 100
    os.utime(mine.path("r1"), (old, old))
    time.sleep(0.4)  # heartbeats every 0.1 s
    assert time.time() - mine.path("r1").stat().st_mtime < 0.3
    remote = other(mine, host="elsewhere")
    assert not remote.claim("r1")
    mine.release_all()
    assert not mine.directory.exists()


# ------------------------------------------------------------------ processes on one directory
SPLIT_GRID = TINY_GRID.replace('name = "tiny"', 'name = "split"').replace("steps = 12", "steps = 120") \
    .replace("eval_every = 4", "eval_every = 60").replace("seed = [0, 1]", "seed = [0, 1, 2]")


def trained_ids(stderr: str) -> list[str]:
    """The run ids a process reports as trained by it ("[i/n] RUN_ID ...")."""
    return re.findall(r"^\[\d+/\d+\] ([0-9a-f]{12}) ", stderr, flags=re.M)


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_two_processes_on_one_directory_train_each_run_once(tmp_path, one_thread):
    grid = write_grid(tmp_path, SPLIT_GRID, "split.toml")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ssl_bench.cli", "run", "--grid", str(grid), "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    first, second = trained_ids(errs[0]), trained_ids(errs[1])
    assert first and second, f"both processes should train some runs:\n{errs}"
    assert not set(first) & set(second), "a run was trained twice"
    rows = pd.read_parquet(out / "split" / "runs")
    assert len(rows) == 12 and rows["run_id"].is_unique and set(rows["status"]) == {"ok"}
    assert sorted(first + second) == sorted(rows["run_id"])
    assert not (out / "split" / "runs" / ".leases").exists()


def test_a_killed_worker_loses_only_its_run(tmp_path, one_thread):
    grid = write_grid(tmp_path, SPLIT_GRID.replace("steps = 120", "steps = 400"), "split.toml")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ssl_bench.cli", "run", "--grid", str(grid), "--out", str(out), "--no-progress"]
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    leases = out / "split" / "runs" / ".leases"
    deadline = time.monotonic() + 120
    while not (leases.is_dir() and list(leases.glob("*.lease"))):
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    (held,) = [p.stem for p in leases.glob("*.lease")]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert (leases / f"{held}.lease").exists()  # the dead worker's claim is still on disk
    survivor = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert survivor.returncode == 0, survivor.stderr
    assert f"{held}: taking over its lease: its owner, pid {victim.pid} on this host, is gone" in survivor.stderr
    rows = pd.read_parquet(out / "split" / "runs")
    assert len(rows) == 12 and rows["run_id"].is_unique and held in set(rows["run_id"])
