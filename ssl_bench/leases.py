"""Run leases: several ``ssl-bench run`` processes on one results directory split a grid.

Start the same command in several shells, on several machines that share the disk, or as the
tasks of a SLURM array: each process claims a run just before it trains it, so every run is
trained by one process and the rows come out complete and unique. No coordinator, no Ray.

A claim is a file ``DIR/GRID/runs/.leases/RUN_ID.lease`` created with ``O_CREAT | O_EXCL`` (an
atomic create on local disks and on NFSv3+), holding its owner (host, pid) and refreshed
(its mtime) by a heartbeat thread every ``timeout / 5`` seconds while the run trains. After
claiming, the process checks whether the run's row appeared meanwhile (another process may
have finished it just before), and lets go if so. The row is written before the lease is
released, so a run is never trained twice.

A lease whose owner is gone is taken over: at once when the owner was on this host and its
process is dead (``kill -9``, a crash), otherwise when its heartbeat is older than ``timeout``
seconds (a dead machine, a hung process; the default 300 s is five missed heartbeats). The
taker renames the stale file away first (atomic: of two takers, one
wins), so only one process retrains the run; the killed process loses only the runs it was
training.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

DEFAULT_TIMEOUT_S = 300.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Leases:
    """The claims of this process on one grid's runs (see the module docstring)."""

    def __init__(self, directory: Path, timeout: float = DEFAULT_TIMEOUT_S, log: Callable[[str], None] | None = None):
        self.directory = directory
        self.timeout = float(timeout)
        self.log = log or (lambda msg: None)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.lease"

    # ------------------------------------------------------------------ claiming
    def claim(self, run_id: str) -> bool:
        """Try to take the run; True when this process now holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(run_id)
        for _ in range(2):  # a second try after taking over a stale lease
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                why = self._stale(path)
                if why is None or not self._break(path, why):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.owner, "claimed_at": time.time()}, f)
            with self._lock:
                self.held.add(run_id)
            self._start_heartbeat()
            return True
        return False

    def holder(self, run_id: str) -> dict | None:
        """Who holds the run's lease (host, pid), or None."""
        try:
            return json.loads(self.path(run_id).read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, path: Path) -> str | None:
        """Why the lease at ``path`` may be taken over, or None while its owner lives."""
        try:
            owner = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "released meanwhile"
        except (OSError, ValueError):  # half-written by a process killed while creating it
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return "released meanwhile"
            return f"unreadable for {age:.0f} s" if age > min(self.timeout, 10.0) else None
        if owner.get("host") == self.owner["host"] and not pid_alive(int(owner.get("pid", -1))):
            return f"its owner, pid {owner.get('pid')} on this host, is gone"
        if age > self.timeout:
            return f"its owner, pid {owner.get('pid')} on {owner.get('host')}, has been silent for {age:.0f} s"
        return None

    def _break(self, path: Path, why: str) -> bool:
        aside = path.with_name(f"{path.name}.stale.{self.owner['host']}.{self.owner['pid']}")
        try:
            os.rename(path, aside)  # of several takers, one rename succeeds
        except FileNotFoundError:
            return why == "released meanwhile"
        aside.unlink(missing_ok=True)
        if why != "released meanwhile":
            self.log(f"{path.stem}: taking over its lease: {why}")
        return True

    def release(self, run_id: str) -> None:
        with self._lock:
            if run_id not in self.held:
                return
            self.held.discard(run_id)
        holder = self.holder(run_id)
        if holder and holder.get("host") == self.owner["host"] and holder.get("pid") == self.owner["pid"]:
            self.path(run_id).unlink(missing_ok=True)

    def release_all(self) -> None:
        for run_id in list(self.held):
            self.release(run_id)
        self._stop.set()
        try:
            self.directory.rmdir()  # only when empty: other processes' leases stay
        except OSError:
            pass

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="ssl-bench-leases", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 5):
            with self._lock:
                held = list(self.held)
            for run_id in held:
                try:
                    os.utime(self.path(run_id))
                except FileNotFoundError:
                    pass  # taken over after all (we were silent too long): the row decides
