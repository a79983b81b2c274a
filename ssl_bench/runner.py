"""Running a grid: validate everything first, then train the runs not yet on disk.

Order of work, so that bad input never costs a result:
1. load and expand the grid, resolving every run (unknown names and keys fail here);
2. load each data set once and check every run's counts against it; build each backbone
   once to check its arguments;
3. only then create the output directory and train, writing each run's row atomically.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import torch

from . import __version__
from .data import ImageDataset, check_counts
from .engine import build_method, build_model, train_run
from .errors import UserError
from .grid import Grid, Run, expand, load_grid, plugin_args
from .params import Count
from .protocol import PLUGIN_KEYS, PROTOCOL_PARAMS
from .registry import Registry
from . import results


@dataclasses.dataclass
class PreparedGrid:
    grid: Grid
    runs: list[Run]
    datasets: dict[str, ImageDataset]  # by dataset key (see dataset_key)
    schema: pa.Schema


def find_grid(ref: str, registry: Registry) -> Path:
    """A grid given by name (from the plugins) or by path to a TOML file."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists() or "/" in ref or "\\" in ref:
        if not path.is_file():
            raise UserError(f"grid file {ref} does not exist")
        return path
    return registry.grid(ref).path


def dataset_key(config: dict) -> str:
    return results.config_json({"name": config["dataset"], "args": plugin_args(config, "dataset")})


def load_dataset(config: dict, registry: Registry, data_dir: Path) -> ImageDataset:
    spec = registry.dataset(config["dataset"])
    try:
        return spec.load(data_dir, **plugin_args(config, "dataset"))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"data set {config['dataset']!r} failed to load: {type(exc).__name__}: {exc}") from exc


def prepare(ref: str, registry: Registry, *, overrides: dict[str, Any] | None = None, smoke: bool = False,
            data_dir: Path, data: str = "required", warn: Callable[[str], None] | None = None) -> PreparedGrid:
    """Load, expand and validate a grid. ``data``: "required" loads every data set and checks
    each run against it (for training); "optional" does so where the data set loads and warns
    otherwise (for --dry-run); "skip" never touches data (for tables)."""
    grid = load_grid(find_grid(ref, registry), overrides, smoke=smoke)
    runs = expand(grid, registry)
    if not runs:
        raise UserError(f"grid {grid.name!r} expands to no runs (check [[exclude]])")
    for table in grid.tables:
        for axis in (table.rows, table.columns, *table.where):
            if not all(axis in run.flat() for run in runs):
                raise UserError(f"grid {grid.name!r}: table {table.name!r} refers to {axis!r}, which is not a "
                                f"setting of every run")
    prepared = PreparedGrid(grid, runs, {}, row_schema(runs, registry))
    if data != "skip":
        check_against_data(prepared, registry, data_dir, optional=data == "optional",
                           warn=warn or (lambda msg: print(msg, file=sys.stderr)))
    return prepared


def check_against_data(prepared: PreparedGrid, registry: Registry, data_dir: Path, *, optional: bool,
                       warn: Callable[[str], None]) -> None:
    """Load each data set once; check every run's counts, backbone arguments and method."""
    datasets = prepared.datasets
    unavailable: set[str] = set()
    checked_models: set[str] = set()
    for run in prepared.runs:
        cfg = run.config
        key = dataset_key(cfg)
        if key in unavailable:
            continue
        if key not in datasets:
            try:
                datasets[key] = load_dataset(cfg, registry, data_dir)
            except UserError as exc:
                if not optional:
                    raise
                unavailable.add(key)
                warn(f"note: counts not checked against data set {cfg['dataset']!r}: {exc}")
                continue
        ds = datasets[key]
        if cfg["augment"] and ds.augment is None:
            raise UserError(f"augment = true, but data set {cfg['dataset']!r} defines no augmentation")
        check_counts(ds.train_y.numpy(), ds.num_classes, n_labeled=cfg["n_labeled"], n_unlabeled=cfg["n_unlabeled"],
                     overlap=cfg["unlabeled_overlap"], n_validation=cfg["n_validation"], dataset=cfg["dataset"],
                     unlabeled_pool=ds.unlabeled_pool, seed=cfg["seed"])
        model_key = results.config_json([cfg["backbone"], plugin_args(cfg, "backbone"), key])
        if model_key not in checked_models:
            checked_models.add(model_key)
            try:
                build_model(cfg, registry, ds)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"backbone {cfg['backbone']!r} cannot be built with {plugin_args(cfg, 'backbone')} "
                                f"for input {ds.input_shape}: {type(exc).__name__}: {exc}") from exc
        build_method(cfg, registry)


def row_schema(runs: list[Run], registry: Registry) -> pa.Schema:
    """Core columns, then every protocol setting, then every plugin parameter of the grid."""
    fields = dict(results.CORE_COLUMNS)
    for p in PROTOCOL_PARAMS:
        if p.name not in fields:
            fields[p.name] = results.arrow_type(p)
    for run in runs:
        for key, section in PLUGIN_KEYS.items():
            name = run.config[key]
            params = (registry.method(name).params() if key == "method" else
                      registry.backbone(name)[0].params if key == "backbone" else registry.dataset(name).params)
            for p in params:
                fields.setdefault(f"{section}.{name}.{p.name}", results.arrow_type(p))
    return pa.schema(list(fields.items()))


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UserError(f"--device {text!r}: only cpu and cuda devices are supported")
    return device


def make_row(run: Run, grid: str, outcome, device: torch.device, started, finished) -> dict[str, Any]:
    cfg = run.config
    row: dict[str, Any] = {k: v for k, v in run.flat().items() if not isinstance(v, dict)}
    for p in PROTOCOL_PARAMS:  # a count setting of "all" is stored as its resolved number below
        if p.type is Count:
            row.pop(p.name, None)
    subsets = outcome.subsets
    row.update({
        "run_id": run.run_id, "grid": grid, "status": outcome.status, "error": outcome.error,
        # a count of "all" is stored as the number it meant (unknown if the run failed first)
        "n_labeled": len(subsets.labeled) if subsets is not None else _count(cfg["n_labeled"]),
        "n_unlabeled": len(subsets.unlabeled) if subsets is not None else _count(cfg["n_unlabeled"]),
        "steps_done": outcome.steps_done, "wall_s": outcome.wall_s,
        "ssl_bench_version": __version__, "torch_version": torch.__version__, "device": str(device),
        "started_at": started, "finished_at": finished, "config": results.config_json(cfg),
        **outcome.metrics, **(subsets.hashes() if subsets is not None else {}),
    })
    return row


def _count(value) -> int | None:
    return None if value == "all" else value


def describe_run(run: Run, keys: list[str]) -> str:
    flat = run.flat()
    return " ".join(f"{k.split('.')[-1]}={flat[k]}" for k in keys if k in flat) or run.config["method"]


def run_grid(prepared: PreparedGrid, registry: Registry, *, out: Path, device: torch.device,
             retry_failed: bool = False, log: Callable[[str], None] | None = None,
             show_progress: bool | None = None, save_models: bool = False) -> dict[str, int]:
    """Train every run not yet finished in ``out``; returns counts by outcome. With
    ``save_models`` the final network of each finished run is kept in ``out/GRID/models/``."""
    from tqdm import tqdm

    grid = prepared.grid
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    results.clean_stale_temporaries(out, grid.name)
    schema = results.harmonise_schema(out, grid.name, prepared.schema)
    done = results.existing_status(out, grid.name)
    skip = {"ok", "diverged"} | (set() if retry_failed else {"failed"})
    todo = [run for run in prepared.runs if done.get(run.run_id) not in skip]
    counts = {"skipped": len(prepared.runs) - len(todo), "ok": 0, "diverged": 0, "failed": 0}
    if counts["skipped"]:
        log(f"{grid.name}: {counts['skipped']} of {len(prepared.runs)} runs already finished in {out / grid.name}")
    if not todo:
        return counts
    keys = [k for k in grid.axis_keys if len({str(r.flat().get(k)) for r in prepared.runs}) > 1]
    disable = None if show_progress is None else not show_progress
    outer = tqdm(total=len(todo), desc=grid.name, unit="run", file=sys.stderr, disable=disable, position=0)
    begun = time.perf_counter()
    for i, run in enumerate(todo):
        inner = tqdm(total=run.config["steps"], desc=run.run_id, unit="step", leave=False,
                     file=sys.stderr, disable=disable, position=1)

        def on_step(step: int, loss: float, err: float, _bar=inner) -> None:
            _bar.update(1)
            if step % 20 == 0:
                _bar.set_postfix(loss=f"{loss:.3f}", err=f"{err:.2f}", refresh=False)

        started = results.now()
        outcome = train_run(run.config, registry, prepared.datasets[dataset_key(run.config)], device, on_step)
        finished = results.now()
        inner.close()
        if save_models and outcome.model is not None:
            results.save_model_atomic(outcome.model.state_dict(), results.models_dir(out, grid.name) / f"{run.run_id}.pt")
        results.write_atomic(results.curves_table(run.run_id, outcome.curves),
                             results.curves_dir(out, grid.name) / f"{run.run_id}.parquet")
        row = make_row(run, grid.name, outcome, device, started, finished)
        results.write_atomic(results.row_table(row, schema), results.runs_dir(out, grid.name) / f"{run.run_id}.parquet")
        counts[outcome.status] += 1
        outer.update(1)
        elapsed = time.perf_counter() - begun
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        detail = f"test_error={outcome.metrics['test_error']:.2f}" if outcome.status == "ok" else outcome.error
        log(f"[{i + 1}/{len(todo)}] {run.run_id} {describe_run(run, keys)}: {outcome.status} {detail} "
            f"({outcome.wall_s:.1f}s, ETA {eta:.0f}s)")
    outer.close()
    return counts
