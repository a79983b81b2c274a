"""Running a grid: validate everything first, then train the runs not yet on disk.

Order of work, so that bad input never costs a result:
1. load and expand the grid, resolving every run (unknown names and keys fail here) and
   check each table's metric against the columns the runs will have;
2. load each run's data sets once and let its task check the settings against them (counts,
   shapes, classes); build each network once to check its arguments (and pretrained weights);
   resolve the method's views;
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
from .backbone import file_sha256
from .data import ImageDataset, data_key, load_data
from .engine import EngineOptions, build_method, build_model, pack_key, packable, plan_run
from .executors import InProcess, Unit
from .errors import UserError
from .grid import Grid, Run, expand, load_grid, plugin_args
from .leases import DEFAULT_TIMEOUT_S, Leases
from .metric import summary_columns
from .params import Count, id_value
from .protocol import PLUGIN_KEYS, PROTOCOL_PARAMS, SUBTABLES
from .registry import Registry
from .views import view_pipeline
from . import results


@dataclasses.dataclass
class PreparedGrid:
    grid: Grid
    runs: list[Run]
    datasets: dict[str, dict[str, ImageDataset]]  # a run's data sets by role, by data key (see data_key)
    schema: pa.Schema


def find_grid(ref: str, registry: Registry) -> Path:
    """A grid given by name (from the plugins) or by path to a TOML file."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists() or "/" in ref or "\\" in ref:
        if not path.is_file():
            raise UserError(f"grid file {ref} does not exist")
        return path
    return registry.grid(ref).path


def prepare(ref: str, registry: Registry, *, overrides: dict[str, Any] | None = None, smoke: bool = False,
            data_dir: Path, data: str = "required", warn: Callable[[str], None] | None = None) -> PreparedGrid:
    """Load, expand and validate a grid. ``data``: "required" loads every data set and checks
    each run against it (for training); "optional" does so where the data set loads and warns
    otherwise (for --dry-run); "skip" never touches data (for tables)."""
    grid = load_grid(find_grid(ref, registry), overrides, smoke=smoke)
    runs = expand(grid, registry)
    if not runs:
        raise UserError(f"grid {grid.name!r} expands to no runs (check [[exclude]])")
    schema = row_schema(runs, registry)
    from .tables import canon, coverage_filter, coverage_per_column, matches

    flats = [run.flat() for run in runs]
    for table in grid.tables:
        # ``where`` first: a table over one method's knob may name a key only that method's runs have
        chosen = [f for f in flats if matches(f, table.where)]
        if not chosen:
            raise UserError(f"grid {grid.name!r}: table {table.name!r}: no run matches where = {table.where}")
        # a "{column}" in a coverage filter is each of the table's column labels in turn
        columns = (list(dict.fromkeys(canon(f.get(table.columns)) for f in chosen)) if coverage_per_column(table)
                   else [None])
        for key, filt in table.coverage.items():
            for column in columns:
                wanted = coverage_filter(filt, column)
                if not any(all(canon(f.get(k)) == canon(v) for k, v in wanted.items()) for f in flats):
                    raise UserError(f"grid {grid.name!r}: table {table.name!r}: no run matches coverage.{key} = {filt}"
                                    + (f" for column {column!r}" if column is not None else ""))
        for axis in (table.rows, *([] if table.metrics else [table.columns])):
            if not all(axis in flat for flat in chosen):
                raise UserError(f"grid {grid.name!r}: table {table.name!r} refers to {axis!r}, which is not a "
                                f"setting of every run it shows")
        values = set(canon(f[table.rows]) for f in chosen)
        unknown = [k for k in table.row_names if k not in values]
        if unknown:
            raise UserError(f"grid {grid.name!r}: table {table.name!r}: row_names renames {unknown}, which no run it "
                            f"shows has as its {table.rows!r}; those are {sorted(values)}")
        clash = sorted(set(table.row_names.values()) & (values - set(table.row_names)))
        if clash:
            raise UserError(f"grid {grid.name!r}: table {table.name!r}: row_names prints {clash}, which is also a row "
                            f"of its own; two rows would merge")
        check_table_metric(grid.name, table, schema)
    prepared = PreparedGrid(grid, runs, {}, schema)
    if data != "skip":
        check_against_data(prepared, registry, data_dir, optional=data == "optional",
                           warn=warn or (lambda msg: print(msg, file=sys.stderr)))
    return prepared


def check_table_metric(grid: str, table, schema: pa.Schema) -> None:
    """A table's metric (and ``select`` column) must be a numeric result column (or an accuracy
    derived from an error)."""
    from .tables import metric_column

    names = set(schema.names)
    for key, metric in (("metric", table.metric), ("select", table.select), *(("metrics", m) for m in table.metrics)):
        if metric and metric_column(metric, names) is None:
            numeric = sorted(f.name for f in schema if pa.types.is_floating(f.type) and f.name not in ("wall_s",))
            raise UserError(f"grid {grid!r}: table {table.name!r}: {key} {metric!r} is not a result column of "
                            f"its runs; one of {', '.join(numeric)}")


def check_against_data(prepared: PreparedGrid, registry: Registry, data_dir: Path, *, optional: bool,
                       warn: Callable[[str], None]) -> None:
    """Load each run's data sets once; let its task check its settings against them; build
    each network once (arguments, pretrained weights); resolve the method's views."""
    datasets = prepared.datasets
    unavailable: set[str] = set()
    checked_models: set[str] = set()
    random_noted: set[str] = set()
    for run in prepared.runs:
        cfg = run.config
        key = data_key(cfg, registry)
        if key in unavailable:
            continue
        if key not in datasets:
            try:
                datasets[key] = load_data(cfg, registry, data_dir)
            except UserError as exc:
                if not optional:
                    raise
                unavailable.add(key)
                warn(f"note: counts not checked against data set {cfg['dataset']!r}: {exc}")
                continue
        data = datasets[key]
        augmentation = cfg.get("augmentation", "standard")
        if not cfg["augment"] and augmentation != "standard":
            raise UserError(f"augmentation = {augmentation!r} is set, but augment = false: set augment = true to "
                            f"augment the training batches")
        if cfg["augment"] and augmentation == "standard":
            for role, ds in data.items():
                if ds.augment is None:
                    raise UserError(f"augment = true, but data set {ds.name!r} ({role}) defines no standard "
                                    f"augmentation; name a view pipeline instead, e.g. augmentation = \"weak\"")
        elif cfg["augment"]:
            view_pipeline(augmentation, registry)  # an unknown name fails here, with the installed ones
        task = registry.task(cfg["task"])()
        task.check(cfg, data)
        method = build_method(cfg, registry)
        for names in method.views.values():
            for name in names:  # an unknown pipeline fails here, with the installed ones
                view_pipeline(name, registry)
        model_key = results.config_json([cfg["backbone"], plugin_args(cfg, "backbone"), cfg["pretrained"], key,
                                         cfg["method"], plugin_args(cfg, "method"), cfg["n_labeled"],
                                         cfg["n_unlabeled"]])
        hint = registry.backbone(cfg["backbone"])[0].pretrained_hint
        if hint and not cfg["pretrained"] and cfg["backbone"] not in random_noted:
            random_noted.add(cfg["backbone"])
            warn(f"note: backbone {cfg['backbone']} starts from RANDOM weights in these runs (pretrained is not set); "
                 f"{hint}")
        if model_key not in checked_models:
            checked_models.add(model_key)
            plan = plan_run(cfg, registry, data)
            method.check(plan)
            source = plan.domains[plan.labeled_domain]
            try:
                build_model(cfg, registry, source, plan.num_outputs, method)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"backbone {cfg['backbone']!r} cannot be built with {plugin_args(cfg, 'backbone')} "
                                f"for input {source.input_shape}: {type(exc).__name__}: {exc}") from exc


def row_schema(runs: list[Run], registry: Registry) -> pa.Schema:
    """Core columns, the summaries of every metric the runs' tasks evaluate, every protocol
    setting, then every plugin parameter of the grid."""
    fields = dict(results.CORE_COLUMNS)
    for run in runs:
        task = registry.task(run.config["task"])()
        for split in task.eval_set_names(run.config):
            for metric in task.eval_metrics(run.config, split):
                columns = list(summary_columns(split, metric, registry.metric(metric).higher_is_better))
                for column in columns[:1] if split == "val" else columns:  # validation: final value only
                    fields.setdefault(column, pa.float64())
        for column in registry.method(run.config["method"]).result_columns:  # its diagnostics' last values
            fields.setdefault(column, pa.float64())
    for p in PROTOCOL_PARAMS:
        if p.name not in fields:
            fields[p.name] = results.arrow_type(p)
    for sub, params in SUBTABLES.items():
        for p in params:
            fields.setdefault(f"{sub}.{p.name}", results.arrow_type(p))
    for run in runs:
        for key, section in PLUGIN_KEYS.items():
            for name in run.config[section]:
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


def make_row(run: Run, grid: str, outcome, device: str, options: EngineOptions) -> dict[str, Any]:
    cfg = run.config
    row: dict[str, Any] = {k: id_value(v) for k, v in run.flat().items() if not isinstance(v, dict)}
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
        "engine": options.describe(), "pack_size": outcome.pack_size,
        "started_at": outcome.started, "finished_at": outcome.finished, "config": results.config_json(cfg),
        "pretrained_sha256": file_sha256(cfg["pretrained"]) if cfg.get("pretrained") else None,
        **outcome.metrics, **(subsets.hashes() if subsets is not None else {}),
    })
    return row


def _count(value) -> int | None:
    return None if value == "all" else value


def describe_run(run: Run, keys: list[str]) -> str:
    flat = run.flat()
    return " ".join(f"{k.split('.')[-1]}={flat[k]}" for k in keys if k in flat) or run.config["method"]


def plan_units(runs: list[Run], registry: Registry, pack: int) -> list[Unit]:
    """Group runs into units of work: packs of up to ``pack`` runs that differ only in seed and
    data subsets (``ssl_bench.engine.pack_key``), in the grid's order of first appearance; runs
    of a method that cannot be packed (``ssl_bench.engine.packable``) go alone."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((data_key(run.config, registry), pack_key(run.config)), []).append(run)
    units = []
    for (key, _), members in groups.items():
        size = pack if packable(registry.method(members[0].config["method"])) else 1
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            units.append(Unit([r.run_id for r in chunk], [r.config for r in chunk], key))
    return units


def pack_size_for_memory(per_run_bytes: int, free_bytes: int, *, share: float = 0.6, cap: int = 64) -> int:
    """How many runs fit in ``share`` of the free device memory at ``per_run_bytes`` each."""
    return int(max(1, min(cap, share * free_bytes // max(per_run_bytes, 1))))


def auto_pack_size(prepared: PreparedGrid, registry: Registry, device: torch.device, options: EngineOptions) -> int:
    """``--pack auto``: on a GPU, measure one short pack of two runs of the grid's first
    configuration and fit as many runs as 60% of the free memory holds (at most 64); on a CPU,
    where memory is not the limit but cache is, packs of up to 8 (benchmarks/perf/RESULTS.md)."""
    if device.type != "cuda":
        return 8
    from .engine import train_pack

    config = dict(prepared.runs[0].config, steps=2, eval_every=2)
    dataset = prepared.datasets[data_key(config, registry)]
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    train_pack([config, dict(config, seed=config["seed"] + 1)], registry, dataset, device, options=options)
    per_run = (torch.cuda.max_memory_allocated(device) - base) / 2
    free, _ = torch.cuda.mem_get_info(device)
    return pack_size_for_memory(int(per_run), free)


def run_grid(prepared: PreparedGrid, registry: Registry, *, out: Path, device: torch.device,
             retry_failed: bool = False, log: Callable[[str], None] | None = None,
             show_progress: bool | None = None, save_models: bool = False,
             options: EngineOptions = EngineOptions(), pack: int | str = 1, executor=None,
             lease_timeout: float = DEFAULT_TIMEOUT_S, reuse: bool = True) -> dict[str, int]:
    """Train every run not yet finished in ``out``; returns counts by outcome. With ``reuse``,
    runs another grid under ``out`` finished (the same run id: the same settings) are copied in
    first (``counts["reused"]``, :func:`ssl_bench.results.adopt_finished`), not trained again. With
    ``save_models`` the final network of each finished run is kept in ``out/GRID/models/``.
    ``pack``: runs per pack (1: each alone; "auto": see :func:`auto_pack_size`); ``executor``:
    where units train (default: in this process on ``device``; see ssl_bench.executors).
    Each run is claimed (``ssl_bench.leases``) just before it trains, so several processes on
    one ``out`` split the grid; ``counts["elsewhere"]`` are the runs other processes held or
    finished meanwhile."""
    from tqdm import tqdm

    grid = prepared.grid
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    options.validate(device)
    if not lease_timeout > 0:
        raise UserError(f"--lease-timeout must be a positive number of seconds, got {lease_timeout}")
    results.clean_stale_temporaries(out, grid.name)
    results.quarantine_damaged(out, grid.name, log)
    adopted = {}
    if reuse:
        done = results.existing_status(out, grid.name)
        adopted = results.adopt_finished(out, grid.name, [r.run_id for r in prepared.runs
                                                          if done.get(r.run_id) not in ("ok", "diverged")])
        if adopted:
            log(f"{grid.name}: {len(adopted)} runs finished in other grids' folders under {out} (the same settings, "
                f"so the same run ids) copied in, not trained again: from {', '.join(sorted(set(adopted.values())))}"
                f" (--no-reuse trains them anew)")
    schema = results.harmonise_schema(out, grid.name, prepared.schema)
    done = results.existing_status(out, grid.name)
    skip = {"ok", "diverged"} | (set() if retry_failed else {"failed"})
    todo = [run for run in prepared.runs if done.get(run.run_id) not in skip]
    counts = {"skipped": len(prepared.runs) - len(todo), "ok": 0, "diverged": 0, "failed": 0, "elsewhere": 0,
              "reused": len(adopted)}
    if counts["skipped"]:
        log(f"{grid.name}: {counts['skipped']} of {len(prepared.runs)} runs already finished in {out / grid.name}")
    if not todo:
        return counts
    if pack == "auto":
        pack = auto_pack_size(prepared, registry, device, options)
        log(f"{grid.name}: packing up to {pack} runs per unit (--pack auto on {device})")
    units = plan_units(todo, registry, int(pack))
    by_id = {run.run_id: run for run in todo}
    keys = [k for k in grid.axis_keys if len({str(r.flat().get(k)) for r in prepared.runs}) > 1]
    disable = None if show_progress is None else not show_progress
    outer = tqdm(total=len(todo), desc=grid.name, unit="run", file=sys.stderr, disable=disable, position=0)
    bars: dict[int, Any] = {}

    def on_step_for(unit: Unit):
        name = unit.run_ids[0] if len(unit.run_ids) == 1 else f"{len(unit.run_ids)} runs"
        bar = bars[id(unit)] = tqdm(total=unit.configs[0]["steps"], desc=name, unit="step", leave=False,
                                    file=sys.stderr, disable=disable, position=1)

        def on_step(step: int, loss: float, err: float) -> None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", err=f"{err:.2f}", refresh=False)
        return on_step

    leases = Leases(results.runs_dir(out, grid.name) / ".leases", lease_timeout, log)

    def claimed(units):
        """Each unit's runs that this process claims now and that nobody finished meanwhile
        (a unit is claimed when the executor takes it: in turn in this process, at submission
        for worker pools and Ray)."""
        for unit in units:
            mine = []
            for i, run_id in enumerate(unit.run_ids):
                if not leases.claim(run_id):
                    holder = leases.holder(run_id) or {}
                    log(f"{run_id}: held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}; left to it")
                    counts["elsewhere"] += 1
                elif results.status_of(out, grid.name, run_id) in skip:  # finished by another process
                    leases.release(run_id)
                    counts["elsewhere"] += 1
                else:
                    mine.append(i)
            if mine:
                yield Unit([unit.run_ids[i] for i in mine], [unit.configs[i] for i in mine], unit.data_key)

    executor = executor or InProcess(device)
    begun = time.perf_counter()
    try:
        _train_units(executor, claimed(units), prepared, options, save_models, registry, on_step_for, log, bars,
                     by_id, out, schema, counts, outer, todo, keys, begun, leases)
    finally:
        leases.release_all()
    outer.close()
    return counts


def _train_units(executor, units, prepared, options, save_models, registry, on_step_for, log, bars, by_id, out,
                 schema, counts, outer, todo, keys, begun, leases) -> None:
    grid = prepared.grid
    finished_runs = 0
    for finished in executor.run(units, prepared.datasets, options=options, keep_models=save_models,
                                 registry=registry, on_step_for=on_step_for, log=log):
        if id(finished.unit) in bars:
            bars.pop(id(finished.unit)).close()
        for run_id, outcome in zip(finished.unit.run_ids, finished.outcomes):
            run = by_id[run_id]
            if save_models and outcome.model is not None:
                results.save_model_atomic(outcome.model.state_dict(), results.models_dir(out, grid.name) / f"{run_id}.pt")
            if outcome.traceback:
                results.write_traceback(out, grid.name, run_id, outcome.traceback)
            else:  # a retried run that now succeeds keeps no traceback of its failure
                (results.tracebacks_dir(out, grid.name) / f"{run_id}.txt").unlink(missing_ok=True)
            results.write_atomic(results.curves_table(run_id, outcome.curves),
                                 results.curves_dir(out, grid.name) / f"{run_id}.parquet")
            row = make_row(run, grid.name, outcome, finished.device, options)
            results.write_atomic(results.row_table(row, schema), results.runs_dir(out, grid.name) / f"{run_id}.parquet")
            leases.release(run_id)  # after the row: a run is never trained twice
            counts[outcome.status] += 1
            finished_runs += 1
            outer.update(1)
            elapsed = time.perf_counter() - begun
            eta = elapsed / finished_runs * (len(todo) - finished_runs)
            main = next(iter(outcome.metrics), "test_error")  # the task's main value: its first set's first metric
            detail = f"{main}={outcome.metrics[main]:.2f}" if outcome.status == "ok" else outcome.error
            packed = f", pack of {outcome.pack_size}" if outcome.pack_size > 1 else ""
            log(f"[{finished_runs}/{len(todo)}] {run_id} {describe_run(run, keys)}: {outcome.status} {detail} "
                f"({outcome.wall_s:.1f}s{packed}, ETA {eta:.0f}s)")
