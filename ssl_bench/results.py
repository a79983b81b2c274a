"""Results on disk: one parquet file per run, written atomically.

Layout of grid G in DIR::

    DIR/G/runs/<run_id>.parquet     one row per finished run (``pandas.read_parquet("DIR/G/runs")``)
    DIR/G/curves/<run_id>.parquet   one row per evaluation of that run

A file is written to a hidden temporary name in the same directory, flushed to disk and then
renamed over its final name, so a reader (or a resumed grid) sees either the whole row or no
row; hidden files are ignored by parquet readers, and stale ones are removed on the next run.
The curve file is written before the run's row, so a row never lacks its curve.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .params import Count, Param

#: columns every run row has, in order (plus one column per plugin parameter of the grid)
CORE_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(), "grid": pa.string(), "status": pa.string(), "error": pa.string(),
    "method": pa.string(), "backbone": pa.string(), "dataset": pa.string(),
    "n_labeled": pa.int64(), "n_unlabeled": pa.int64(), "n_validation": pa.int64(), "seed": pa.int64(),
    "test_error": pa.float64(), "test_error_min": pa.float64(), "test_error_last_k": pa.float64(),
    "test_error_best_val": pa.float64(), "val_error": pa.float64(),
    "steps": pa.int64(), "steps_done": pa.int64(), "wall_s": pa.float64(),
    "labeled_hash": pa.string(), "unlabeled_hash": pa.string(), "validation_hash": pa.string(),
    "ssl_bench_version": pa.string(), "torch_version": pa.string(), "device": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
    "config": pa.string(),
}
_ARROW = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string(), Count: pa.string()}


def arrow_type(param: Param) -> pa.DataType:
    return _ARROW[param.type]


def runs_dir(out: Path, grid: str) -> Path:
    return Path(out) / grid / "runs"


def curves_dir(out: Path, grid: str) -> Path:
    return Path(out) / grid / "curves"


def write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def row_table(row: dict[str, Any], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names}], schema=schema)


def curves_table(run_id: str, curves: list[dict]) -> pa.Table:
    frame = pd.DataFrame(curves or [{"step": 0}])
    if not curves:
        frame = frame.iloc[:0]
    frame.insert(0, "run_id", run_id)
    return pa.Table.from_pandas(frame, preserve_index=False)


def clean_stale_temporaries(out: Path, grid: str) -> int:
    """Remove temporary files left by a killed process (they were never renamed into place)."""
    removed = 0
    for directory in (runs_dir(out, grid), curves_dir(out, grid)):
        if directory.is_dir():
            for tmp in directory.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def existing_status(out: Path, grid: str) -> dict[str, str]:
    """run_id -> status of the rows already on disk."""
    directory = runs_dir(out, grid)
    if not directory.is_dir():
        return {}
    status = {}
    for path in directory.glob("*.parquet"):
        if path.name.startswith("."):
            continue
        status[path.stem] = pq.read_table(path, columns=["status"]).column(0)[0].as_py()
    return status


def read_runs(out: Path, grid: str) -> pd.DataFrame:
    """All rows of a grid's results, one per file (robust to files of older schemas)."""
    directory = runs_dir(out, grid)
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")) if directory.is_dir() else []
    if not files:
        return pd.DataFrame(columns=list(CORE_COLUMNS))
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


def read_curves(out: Path, grid: str, run_id: str) -> pd.DataFrame:
    path = curves_dir(out, grid) / f"{run_id}.parquet"
    return pq.read_table(path).to_pandas() if path.exists() else pd.DataFrame()


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
