"""The ``ssl-bench`` command line (contract in DESIGN.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError


def _parse_sets(pairs: list[str], flag: str = "--set") -> dict:
    from .grid import parse_value

    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            example = "steps=100" if flag == "--set" else "n=200"
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} {example}")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def cmd_list(args) -> int:
    from .catalogue import catalogue
    from .hookspecs import KIND_NAMES

    found = catalogue()  # cached: listing imports no plugin (nor torch) unless the software changed
    for kind in [args.kind] if args.kind else KIND_NAMES:
        if not args.kind:
            print(f"# {kind}")
        for row in found.rows.get(kind, []):
            print(f"{row.name}\t{row.provider}\t{row.summary}")
            if args.verbose and row.details:
                print(row.details)
    for kind, message in found.conflicts:
        if args.kind in (None, kind):
            print(f"CONFLICT\t{kind}\t{message}")
    for line, details in found.broken:
        print(f"BROKEN\t{line}")
        if args.verbose:
            print(details)
    return 0


def _prepare(args, data: str = "required"):
    from .data import default_data_dir
    from .registry import registry
    from .runner import prepare

    reg = registry()
    return reg, prepare(args.grid, reg, overrides=_parse_sets(args.set), smoke=args.smoke,
                        data_dir=default_data_dir(args.data_dir), data=data)


def _print_tables(prepared, out: Path, fmt: str = "markdown", compare: bool = False, show_n: bool = False,
                  only: str | None = None) -> None:
    from .results import read_runs
    from .tables import render

    grid = prepared.grid.name
    every = read_runs(out, grid)
    rows = read_runs(out, grid, run_ids=[r.run_id for r in prepared.runs])
    note = ""
    if len(rows) < len(prepared.runs):
        others = len(every) - len(rows)
        note = (f"note: {len(rows)} of the {len(prepared.runs)} runs of grid {grid!r} have results in {out / grid}"
                + (f"; {others} other row(s) there belong to other configurations of the grid (another --set or "
                   f"--smoke, or an older version of the grid file)" if others else "")
                + (f"; `ssl-bench run --grid {grid} --out {out}` (with the same --set options) trains them"
                   if not len(rows) else ""))
    tables = [t for t in prepared.grid.tables if only in (None, t.name)]
    if only and not tables:
        raise UserError(f"grid {prepared.grid.name!r} has no table {only!r}; its tables: "
                        f"{', '.join(t.name for t in prepared.grid.tables) or 'none'}")
    if not tables:
        print(f"(grid {prepared.grid.name!r} declares no tables)")
    rendered = [render(spec, prepared.runs, rows, fmt, compare=compare, show_n=show_n) for spec in tables]
    if note:  # after rendering: an error stays the one line on stderr
        print(note, file=sys.stderr)
    print("\n\n".join(rendered))  # all or nothing: a failing table prints none


def cmd_run(args) -> int:
    from .runner import describe_run, parse_device, run_grid

    device = parse_device(args.device)
    options, pack, executor = _execution(args, device)
    reg, prepared = _prepare(args, data="optional" if args.dry_run else "required")
    if args.dry_run:
        keys = prepared.grid.axis_keys
        for run in prepared.runs:
            print(f"{run.run_id}\t{describe_run(run, keys)}")
        print(f"{len(prepared.runs)} runs in grid {prepared.grid.name}")
        return 0
    out = Path(args.out)
    if args.debug:
        from . import engine

        engine.RAISE_RUN_ERRORS = True
    counts = run_grid(prepared, reg, out=out, device=device, retry_failed=args.retry_failed,
                      show_progress=False if args.no_progress else None, save_models=args.save_models,
                      options=options, pack=pack, executor=executor, lease_timeout=args.lease_timeout,
                      reuse=not args.no_reuse)
    elsewhere = f", {counts['elsewhere']} left to other processes" if counts.get("elsewhere") else ""
    reused = f" ({counts['reused']} copied from other grids)" if counts.get("reused") else ""
    print(f"{prepared.grid.name}: {counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed, "
          f"{counts['skipped']} already done{reused}{elsewhere}; results in {out / prepared.grid.name}", file=sys.stderr)
    _print_tables(prepared, out)
    return 1 if counts["failed"] else 0


def _engine_options(args, device):
    from .engine import EngineOptions

    options = EngineOptions(bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                            cuda_graphs=args.cuda_graphs)
    options.validate(device)
    return options


def _add_engine_flags(group) -> None:
    group.add_argument("--bf16", action="store_true", help="bf16 autocast for forward passes")
    group.add_argument("--channels-last", action="store_true", help="channels_last memory format (runs trained alone)")
    group.add_argument("--compile", action="store_true", help="torch.compile the objective")
    group.add_argument("--cuda-graphs", action="store_true", help="CUDA graphs for the compiled objective (CUDA only)")


def _execution(args, device):
    """Engine options, pack size and executor from the command line, validated before any work."""
    from .data import default_data_dir
    from .executors import LocalPool, RayExecutor
    from .runner import parse_device

    options = _engine_options(args, device)
    if args.pack == "auto":
        pack = "auto"
    else:
        try:
            pack = int(args.pack)
        except ValueError:
            pack = 0
        if pack < 1:
            raise UserError(f"--pack {args.pack!r}: give a number of runs (1 = no packing) or auto")
    executor = None
    if args.executor == "ray":
        if args.devices:
            raise UserError("--devices is for --executor local; Ray places tasks itself (see --gpus-per-task)")
        executor = RayExecutor(args.address, args.gpus_per_task, device)
    elif args.address:
        raise UserError("--address is the Ray cluster's address: use it with --executor ray")
    elif args.devices:
        devices = [parse_device(d.strip()) for d in args.devices.split(",") if d.strip()]
        for d in devices:
            options.validate(d)
        executor = LocalPool(devices, default_data_dir(args.data_dir))
    return options, pack, executor


def cmd_bench(args) -> int:
    from ssl_bench_benchmarks.perf.bench import format_report, run_benchmark, write_json
    from .runner import parse_device

    device = parse_device(args.device)
    options = _engine_options(args, device)
    if args.pack < 1 or args.steps < 1 or args.warmup < 1:
        raise UserError("--pack, --steps and --warmup must be at least 1")
    report = run_benchmark(grid=args.grid, device=device, pack=args.pack, steps=args.steps, warmup=args.warmup,
                           workers=args.workers, options=options, n_images=args.images, skip_naive=args.no_naive,
                           data_dir=Path(args.data_dir) if args.data_dir else None,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        write_json(report, Path(args.json))
    return 0


def cmd_table(args) -> int:
    _, prepared = _prepare(args, data="skip")
    _print_tables(prepared, Path(args.out), args.format, args.compare, args.show_n, args.table)
    return 0


def cmd_figure(args) -> int:
    from .figures import figure_for_run
    from .runner import parse_device

    device = parse_device(args.device)
    reg, prepared = _prepare(args)
    path = figure_for_run(prepared, reg, args.run, args.kind, out=Path(args.out), device=device, train=args.train,
                          path=Path(args.png) if args.png else None,
                          log=lambda msg: print(msg, file=sys.stderr), args=_parse_sets(args.arg, "--arg"))
    print(path)
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_metric
    from .results import read_runs

    _, prepared = _prepare(args, data="skip")
    out = Path(args.out)
    grid = prepared.grid
    path = Path(args.png) if args.png else out / grid.name / "figures" / f"{args.metric}_vs_{args.x}.png"
    title = f"{grid.name}: {args.metric} vs {args.x}"
    plot_metric(prepared.runs, read_runs(out, grid.name), x=args.x, metric=args.metric, series=args.series,
                stat=args.statistic, title=title, path=path)
    print(path)
    return 0


def cmd_show(args) -> int:
    import pandas as pd

    from .results import read_curves

    out = Path(args.out)
    matches = sorted(out.glob(f"*/runs/{args.run_id}*.parquet"))
    if not matches:
        raise UserError(f"no run {args.run_id!r} in {out} (looked for {out}/*/runs/{args.run_id}*.parquet)")
    if len({m.stem for m in matches}) > 1:
        raise UserError(f"run id prefix {args.run_id!r} is ambiguous: {', '.join(sorted({m.stem for m in matches}))}")
    path = matches[0]
    if args.traceback:
        grid_dir = path.parent.parent
        trace = grid_dir / "tracebacks" / f"{path.stem}.txt"
        if not trace.exists():
            status = pd.read_parquet(path, columns=["status"])["status"].iloc[0]
            raise UserError(f"run {path.stem} ({status}) has no traceback"
                            + ("" if status == "failed" else ": only failed runs have one"))
        print(trace.read_text(), end="")
        return 0
    row = pd.read_parquet(path).iloc[0]
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 120):
        print(row.drop(labels=["config"]).to_string())
        print(f"config\t{row['config']}")
        curves = read_curves(out, path.parent.parent.name, run_id=path.stem)
        if len(curves):
            print("\ncurve:")
            print(curves.drop(columns=["run_id"]).to_string(index=False))
    return 0


def cmd_data(args) -> int:
    from .data import default_data_dir
    from .registry import registry

    spec = registry().dataset(args.name)
    if args.data_command == "build":
        return _data_build(spec, args)
    if spec.download is None:
        print(f"{args.name}: nothing to download ({spec.help})")
        return 0
    root = default_data_dir(args.data_dir)
    spec.download(root)
    print(f"{args.name}: files present and verified under {root}")
    return 0


def _data_build(spec, args) -> int:
    """``ssl-bench data build NAME [--set KEY=VALUE]``: the data set's ``build(data_dir, **params)``
    with its parameters (those of ``load``) validated first; prints what the build reports."""
    from .data import default_data_dir
    from .params import validate

    if spec.build is None:
        print(f"{args.name}: nothing to build (it is read from its files as they are; {spec.help})")
        return 0
    params = validate(spec.params, _parse_sets(args.set), f"datasets.{args.name}.")
    print(spec.build(default_data_dir(args.data_dir), **params))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in the same one-line form as every other user error."""

    def error(self, message: str):
        self.exit(2, f"ssl-bench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssl-bench", description="Seeded semi-supervised learning benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)

    from .hookspecs import KIND_NAMES  # not the registry: `--help` must not import torch

    p = sub.add_parser("list", help="list installed plugins by kind (methods, backbones, datasets, tasks, metrics, "
                                    "augmentations, grids) and broken plugins")
    p.add_argument("kind", nargs="?", choices=list(KIND_NAMES))
    p.add_argument("-v", "--verbose", action="store_true", help="show parameters and plugin errors in full")
    p.set_defaults(func=cmd_list)

    def grid_args(p):
        p.add_argument("--grid", required=True, help="grid name (see `ssl-bench list grids`) or path to a TOML file")
        p.add_argument("--out", default="results", help="results directory (default: results/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                       help="override a setting for every run, e.g. --set steps=100 --set methods.lba.visit_weight=0.5")
        p.add_argument("--data-dir", help="data root (default: $SSL_BENCH_DATA, then ~/.cache/ssl-bench)")
        p.add_argument("--smoke", action="store_true",
                       help="scale-down check: 2 steps, first seed only, plus the grid's [smoke] settings")

    p = sub.add_parser("run", help="run every unfinished run of a grid, then print its tables")
    grid_args(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--no-reuse", action="store_true",
                   help="train runs that another grid under --out finished (the same run id) anew, instead of copying "
                        "their results in")
    p.add_argument("--debug", action="store_true", help="a failing run stops the grid with its traceback instead "
                                                        "of being recorded as failed (in-process runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished run)")
    p.add_argument("--save-models", action="store_true", help="keep each run's final network in OUT/GRID/models/")
    e = p.add_argument_group("execution (how runs train; never changes a run id, recorded in column engine)")
    e.add_argument("--pack", default="1", metavar="K|auto",
                   help="train up to K runs that differ only in seed/subsets together (torch.func + vmap); "
                        "auto: as many as fit in GPU memory (8 on a CPU); default 1")
    _add_engine_flags(e)
    e.add_argument("--devices", help="comma-separated devices, one worker process each (e.g. cuda:0,cuda:1)")
    e.add_argument("--executor", default="local", choices=["local", "ray"], help="local processes or a Ray cluster")
    e.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    e.add_argument("--lease-timeout", type=float, default=300.0,
                   help="seconds of silence after which another process's claim on a run expires (several "
                        "`ssl-bench run` on one --out split the grid; a dead process on this host expires at once)")
    e.add_argument("--gpus-per-task", type=float, default=1.0,
                   help="GPUs a Ray task asks for with --device cuda (fractions share a GPU); default 1")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="training throughput: naive torchvision loop vs engine vs packed runs")
    p.add_argument("--grid", default="svhn_table3", help="grid whose first run with unlabeled data is measured")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--pack", type=int, default=4, help="runs in the packed variant (default 4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="steps whose time is subtracted (default 3)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the naive loop (default min(4, cores))")
    p.add_argument("--images", type=int, default=10000, help="random SVHN-format images without --data-dir")
    p.add_argument("--data-dir", help="data root with the real svhn/train_32x32.mat, svhn/test_32x32.mat")
    p.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    p.add_argument("--json", help="also write the numbers as JSON here")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("table", help="render a grid's tables from its results")
    grid_args(p)
    p.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv", "html"])
    p.add_argument("--compare", action="store_true", help="show the paper's numbers and the difference")
    p.add_argument("--show-n", action="store_true", help="show the number of runs in each cell")
    p.add_argument("--table", help="only this table of the grid")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("figure", help="draw a qualitative figure of a trained run as PNG")
    p.add_argument("kind", help="neighbours, tsne (any run), association (lba), ...")
    grid_args(p)
    p.add_argument("--run", required=True, help="run id (or a unique prefix) of the grid")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--train", action="store_true", help="train the run now if its network was not saved")
    p.add_argument("--png", help="output file (default: OUT/GRID/figures/RUN_KIND.png)")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE", default=[],
                   help="a setting of the figure, e.g. --arg n=200 --arg perplexity=20 (tsne: test embeddings "
                        "per domain, default 1000; t-SNE perplexity, default 35) or --arg queries=4 (neighbours)")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("plot", help="plot a metric against a setting as PNG (one line per --series value)")
    grid_args(p)
    p.add_argument("--x", required=True, help="setting on the x axis, e.g. methods.cclp.steps")
    p.add_argument("--metric", default="test_error", help="test_error, val_error, test_error_min, ...")
    p.add_argument("--series", help="setting with one line per value, e.g. n_labeled")
    p.add_argument("--statistic", default="median", choices=["median", "mean"])
    p.add_argument("--png", help="output file (default: OUT/GRID/figures/METRIC_vs_X.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("show", help="print one run's row and evaluation curve")
    p.add_argument("run_id", help="a run id or a unique prefix of one")
    p.add_argument("--out", default="results")
    p.add_argument("--traceback", action="store_true", help="print a failed run's full traceback instead")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("data", help="data-set files")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download and verify a data set's files")
    d.add_argument("name")
    d.add_argument("--data-dir")
    d.set_defaults(func=cmd_data)
    d = dsub.add_parser("build", help="build a derived data set's files once (e.g. mnist_m), with a checksum manifest")
    d.add_argument("name")
    d.add_argument("--data-dir", help="data root (default: $SSL_BENCH_DATA, then ~/.cache/ssl-bench)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a parameter of the data set, e.g. --set seed=1 (see `ssl-bench list datasets -v`)")
    d.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ssl-bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("ssl-bench: interrupted; finished runs are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
