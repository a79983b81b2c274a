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

from .leases import pid_alive
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
    "engine": pa.string(), "pack_size": pa.int64(),
    "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
    "config": pa.string(), "pretrained_sha256": pa.string(),
}
_ARROW = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string(), Count: pa.string()}


def arrow_type(param: Param) -> pa.DataType:
    """A parameter's column type; a list is stored as its comma-joined string (as in run ids)."""
    return _ARROW.get(param.type, pa.string())


def runs_dir(out: Path, grid: str) -> Path:
    return Path(out) / grid / "runs"


def curves_dir(out: Path, grid: str) -> Path:
    return Path(out) / grid / "curves"


def models_dir(out: Path, grid: str) -> Path:
    return Path(out) / grid / "models"


def write_atomic(table: pa.Table, path: Path) -> None:
    _write_atomic(path, lambda fh: pq.write_table(table, fh))


def save_model_atomic(state_dict: dict, path: Path) -> None:
    import torch

    _write_atomic(path, lambda fh: torch.save(state_dict, fh))


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def adopt_finished(out: Path, grid: str, run_ids, statuses=("ok", "diverged")) -> dict[str, str]:
    """Copy into ``grid``'s folder the results of the runs in ``run_ids`` that another grid under
    ``out`` finished with one of ``statuses`` (a run id hashes the run's whole configuration, so
    that run IS this grid's run; paper tables that print the same cells share runs this way):
    its curves and saved network, then its row, with the ``grid`` column set to ``grid``; each
    file atomically, the row last (a row means finished). Returns run id -> the grid it came from."""
    import shutil

    wanted = set(run_ids)
    adopted: dict[str, str] = {}
    others = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != grid) if out.is_dir() else []
    for other in others:
        for run_id in sorted(wanted - set(adopted)):
            path = runs_dir(out, other) / f"{run_id}.parquet"
            if not path.is_file():
                continue
            curves = curves_dir(out, other) / f"{run_id}.parquet"
            try:
                table = pq.read_table(path)
                if table.column("status")[0].as_py() not in statuses:
                    continue
                curve = pq.read_table(curves) if curves.is_file() else None
            except (OSError, pa.ArrowInvalid, KeyError, IndexError):
                continue  # damaged or foreign: that grid's own reader deals with it, this one trains the run
            if curve is not None:
                write_atomic(curve, curves_dir(out, grid) / curves.name)
            model = models_dir(out, other) / f"{run_id}.pt"
            if model.is_file():
                with open(model, "rb") as source:
                    _write_atomic(models_dir(out, grid) / model.name, lambda fh: shutil.copyfileobj(source, fh))
            where = table.schema.get_field_index("grid")
            if where >= 0:
                table = table.set_column(where, table.schema.field(where), pa.array([grid] * len(table), pa.string()))
            write_atomic(table, runs_dir(out, grid) / path.name)
            adopted[run_id] = other
    return adopted


def row_table(row: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """One row in the schema; a number in a string column (a plugin's count setting, "all" or a
    number, e.g. svhn's extra_count = 5) is stored as its text."""
    def cell(field: pa.Field):
        value = row.get(field.name)
        if value is not None and pa.types.is_string(field.type) and not isinstance(value, str):
            return str(value)
        return value

    return pa.Table.from_pylist([{f.name: cell(f) for f in schema}], schema=schema)


#: one schema for every curve file, so the curves folder reads as one table; the method's
#: named loss terms (mean over the steps since the last evaluation) are a map column, and so are
#: every other evaluated value (``test_nmi``, ``source_test_error``, ...) and the method's
#: diagnostics (``labels_assigned``, ...)
CURVE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("lr", pa.float64()), ("loss", pa.float64()),
    ("test_error", pa.float64()), ("val_error", pa.float64()), ("loss_terms", pa.map_(pa.string(), pa.float64())),
    ("metrics", pa.map_(pa.string(), pa.float64())),
])


def curves_table(run_id: str, curves: list[dict]) -> pa.Table:
    rows = [{"run_id": run_id, "step": c["step"], "lr": c.get("lr"), "loss": c.get("loss"),
             "test_error": c.get("test_error"), "val_error": c.get("val_error"),
             "loss_terms": sorted(c.get("loss_terms", {}).items()),
             "metrics": sorted(c.get("metrics", {}).items())} for c in curves]
    return pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)


def harmonise_schema(out: Path, grid: str, schema: pa.Schema) -> pa.Schema:
    """The schema for new rows: ``schema`` merged with that of the rows already on disk. Older
    files lacking a column (e.g. a grid first run for one method, then for another) are
    rewritten, atomically, with the merged schema, so ``pandas.read_parquet`` of the folder
    always sees every column whichever file it reads first."""
    directory = runs_dir(out, grid)
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")) if directory.is_dir() else []
    existing = {p: pq.read_schema(p).remove_metadata() for p in files}
    try:
        merged = pa.unify_schemas([schema, *existing.values()])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        from .errors import UserError

        raise UserError(f"results in {directory} have columns of another type than this version writes "
                        f"({exc}); use another --out directory") from None
    for path, file_schema in existing.items():
        if not file_schema.equals(merged):
            table = pq.read_table(path)
            columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
                       else pa.nulls(len(table), f.type) for f in merged]
            write_atomic(pa.Table.from_arrays(columns, schema=merged), path)
    return merged


def tracebacks_dir(out: Path, grid: str) -> Path:
    return out / grid / "tracebacks"


def write_traceback(out: Path, grid: str, run_id: str, text: str) -> None:
    """A failed run's traceback, ``GRID/tracebacks/RUN_ID.txt`` (``ssl-bench show RUN --traceback``)."""
    directory = tracebacks_dir(out, grid)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{run_id}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / f"{run_id}.txt")


def clean_stale_temporaries(out: Path, grid: str) -> int:
    """Remove temporary files left by a killed process (they were never renamed into place).
    A temporary of a process that is still alive (another runner on the same grid) is kept."""
    removed = 0
    for directory in (runs_dir(out, grid), curves_dir(out, grid), models_dir(out, grid)):
        if directory.is_dir():
            for tmp in directory.glob(".*.tmp"):
                if _writer_alive(tmp):
                    continue
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _writer_alive(tmp: Path) -> bool:
    try:
        pid = int(tmp.name.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return False
    return pid != os.getpid() and pid_alive(pid)


DAMAGED = ".damaged"


def quarantine_damaged(out: Path, grid: str, warn=None) -> list[Path]:
    """Move result files that are not readable parquet (a truncated copy, a disk error, zero
    bytes) aside to ``runs/.damaged/`` or ``curves/.damaged/``, with one warning line each, so
    that their runs count as not done (``run`` retrains them, ``table`` shows them missing).
    A row whose curve is damaged goes aside with it (a row never lacks its curve). Returns the
    new paths. Files are written by atomic renames, so a readable file is a whole one."""
    import sys

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    moved: list[Path] = []

    def move(path: Path, why: str) -> None:
        target_dir = path.parent / DAMAGED
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        n = 1
        while target.exists():  # keep every damaged copy: nothing is deleted
            target, n = target_dir / f"{path.stem}.{n}{path.suffix}", n + 1
        os.replace(path, target)
        moved.append(target)
        warn(f"warning: {path} is damaged ({why}); moved to {target}; its run counts as not done")

    runs, curves = runs_dir(out, grid), curves_dir(out, grid)
    damaged_curves = set()
    for directory in (curves, runs):
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")):
            try:
                table = pq.read_table(path)  # (a curve may be empty: a run that failed before evaluating)
                if directory == runs and (table.num_rows != 1 or "status" not in table.column_names):
                    raise ValueError(f"{table.num_rows} rows" if table.num_rows != 1 else "no status column")
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for broken files
                if directory == curves:
                    damaged_curves.add(path.stem)
                move(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
                continue
            if directory == runs and path.stem in damaged_curves:
                move(path, "its curve file is damaged")
    return moved


def status_of(out: Path, grid: str, run_id: str) -> str | None:
    """The status of one run's row, or None when it has none (or an unreadable one)."""
    path = runs_dir(out, grid) / f"{run_id}.parquet"
    try:
        return pq.read_table(path, columns=["status"]).column(0)[0].as_py()
    except (OSError, pa.ArrowInvalid, IndexError):
        return None


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


def read_runs(out: Path, grid: str, warn=None, run_ids=None) -> pd.DataFrame:
    """All rows of a grid's results, one per file (robust to files of older schemas), or only
    those of ``run_ids`` (e.g. the grid's current runs: ``[r.run_id for r in prepared.runs]``);
    damaged files are moved aside first (:func:`quarantine_damaged`)."""
    quarantine_damaged(out, grid, warn)
    directory = runs_dir(out, grid)
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")) if directory.is_dir() else []
    if run_ids is not None:
        wanted = set(run_ids)
        files = [p for p in files if p.stem in wanted]
    if not files:
        return pd.DataFrame(columns=list(CORE_COLUMNS))
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


def read_curves(out: Path, grid: str, run_id: str | None = None) -> pd.DataFrame:
    """A grid's evaluation curves (or one run's) with the loss terms as ``loss_<name>`` columns
    and the other evaluated values and diagnostics as columns of their own names."""
    directory = curves_dir(out, grid)
    files = [directory / f"{run_id}.parquet"] if run_id else sorted(
        p for p in directory.glob("*.parquet") if not p.name.startswith("."))
    files = [p for p in files if p.exists()]
    if not files:
        return pd.DataFrame(columns=CURVE_SCHEMA.names)
    tables = [pq.read_table(p) for p in files]
    tables = [t if "metrics" in t.column_names else  # curves written before 0.2 have no metrics map
              t.append_column("metrics", pa.array([None] * len(t), CURVE_SCHEMA.field("metrics").type)) for t in tables]
    frame = pa.concat_tables(tables).to_pandas()
    widened = [frame]
    for column, prefix in (("loss_terms", "loss_"), ("metrics", "")):
        values = pd.DataFrame([dict(v) if v is not None else {} for v in frame.pop(column)], index=frame.index)
        widened.append(values.add_prefix(prefix))
    return pd.concat(widened, axis=1)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
